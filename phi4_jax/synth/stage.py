"""A recipe's synth stage (kind "synth"): a synth pipeline run on a generator, by default the model
of the last training stage before it, into the stage's folder. A later stage reads one type's
records through the source glob `stage:<name>/<type>` (`stage:<name>` alone: the first type's).
The stage is done once W/summary.json exists; until then a rerun resumes.
"""

from __future__ import annotations

import os

import ml_collections

from phi4_jax import fields
from phi4_jax.synth import generator, pipeline

STAGE = fields.Group(
    kind=fields.Field("synth", fields.choice(("synth",)), '"synth"'),
    stage=fields.Field("synth", fields.string(), "the stage's name in logs"),
    init_from=fields.Field("", fields.string(), "the model's workdir (a recipe fills it)"),
    init_step=fields.Field(-1, fields.integer(-1), "its checkpoint step (-1 = latest)"),
    generator=fields.Field("", fields.string(),
                           'another generator (a workdir, HF folder or http(s)://URL,model=NAME); "" = init_from'),
)


def stage_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A synth stage: STAGE's fields and `pipeline` (a synth pipeline config, synth/pipeline.py)."""
  c = STAGE.config()
  c.pipeline = config
  return c


def validate(config: ml_collections.ConfigDict, prefix: str = "config") -> None:
  STAGE.check({k: v for k, v in config.items() if k != "pipeline"}, prefix)
  if "pipeline" not in config:
    raise ValueError(f"{prefix}.pipeline: missing (a synth pipeline config)")
  pipeline.check(config.pipeline, f"{prefix}.pipeline")
  if config.generator:
    generator.model_path(config.generator)  # (an endpoint's options, or a model folder that exists)


def spec(config: ml_collections.ConfigDict) -> tuple[str, int | None]:
  if config.generator:
    return config.generator, None
  if not config.init_from:
    raise ValueError(f"config.init_from: stage {config.stage} needs a generator (a model before it, or "
                     "config.generator)")
  return config.init_from, None if config.init_step < 0 else config.init_step


def run(config: ml_collections.ConfigDict, stage_dir: str) -> dict:
  import jax
  validate(config)
  source_spec, step = spec(config)
  first = config.pipeline[config.pipeline.types[0]]
  source = generator.load(source_spec, step, concurrency=first.concurrency, max_batch=first.max_batch,
                          top_p=first.top_p)
  return pipeline.run(config.pipeline, source, generator.identity(source_spec, step), stage_dir,
                      process_index=jax.process_index(), process_count=jax.process_count())


def finished(stage_dir: str) -> bool:
  return pipeline.read_summary(stage_dir) is not None


def output(config: ml_collections.ConfigDict, stage_dir: str) -> str:
  return os.path.join(stage_dir, f"{config.pipeline.types[0]}.jsonl")


def note(stage_dir: str) -> str | None:
  """Per type: accepted of generated, the rejections by reason, unique tokens (the report's notes)."""
  summary = pipeline.read_summary(stage_dir)
  if summary is None:
    return None
  parts = []
  for name, s in summary["types"].items():
    why = ", ".join(f"{n} {r}" for r, n in s["rejected"].items())
    parts.append(f"{name}: {s['accepted']} accepted of {s['generated']} from {s['items']} items"
                 f"{f' ({why})' if why else ''}, {s['unique_tokens']} tokens")
  return "; ".join(parts)

"""A recipe's curate stage (kind "curate"): one source's files through the curation pipeline
(curate/pipeline.py, the steps and groups of `python -m phi4_jax.curate`) into the stage's folder,
before the stage that trains on them. A later stage reads the clean copies through the source glob
`stage:<name>` (or `stage:<name>/<source>`). Done once W/summary.json exists; until then a rerun
resumes (the pipeline's own work files).

  c.curate_web = curate.stage.stage_config("web", "corpus:web", steps="filter,dedup")
  c.pretrain.data.sources.web.globs = "stage:curate_web"
"""

from __future__ import annotations

import json
import os

import ml_collections

from phi4_jax import fields
from phi4_jax.curate import documents, pipeline, settings
from phi4_jax.data import config as data_config
from phi4_jax.data import planner
from phi4_jax.store import fingerprint

STAGE = fields.Group(
    kind=fields.Field("curate", fields.choice(("curate",)), '"curate"'),
    stage=fields.Field("curate", fields.string(), "the stage's name in logs"),
    source=fields.Field("web", fields.string(), "the curated source's name (its folder in W, and the report's)"),
    input=fields.Field("", fields.string(), "its documents: comma-separated globs (corpus:<name> = embedded)"),
    format=fields.Field("", fields.string(), 'their format ("" = from each extension)'),
    text_field=fields.Field("text", fields.string(), "the field holding a document's text"),
)


def stage_config(source: str, input_globs: str, **curate_overrides) -> ml_collections.ConfigDict:
  """A curate stage: STAGE's fields and `curate` (the pipeline's config, curate/settings.py)."""
  c = STAGE.config(stage=f"curate_{source}", source=source, input=input_globs)
  c.curate = settings.config(**curate_overrides)
  return c


def validate(config: ml_collections.ConfigDict, prefix: str = "config") -> None:
  STAGE.check({k: v for k, v in config.items() if k != "curate"}, prefix)
  if not config.input:
    raise ValueError(f"{prefix}.input: the documents to curate (comma-separated globs)")
  if "curate" not in config:
    raise ValueError(f"{prefix}.curate: missing (a curation config, curate/settings.py)")
  settings.check(config.curate, f"{prefix}.curate")
  steps = pipeline.steps_of(config.curate)
  if "classify" in steps and not config.curate.classify.classifier:
    raise ValueError(f"{prefix}.curate.classify.classifier: the classify step needs a trained classifier's "
                     "folder (python -m phi4_jax.curate train)")


def _leaf(config: ml_collections.ConfigDict) -> planner.Leaf:
  return planner.Leaf(config.source, "config.input", 1.0,
                      data_config.source(config.input, 1.0, format=config.format, text_field=config.text_field))


def _files(config: ml_collections.ConfigDict) -> list[documents.File]:
  return documents.files_of([_leaf(config)])


def run(config: ml_collections.ConfigDict, stage_dir: str) -> dict:
  validate(config)
  files = _files(config)
  fingerprint.refuse_input_as_output(stage_dir, {f"{config.stage}.input": f.path for f in files})
  os.makedirs(stage_dir, exist_ok=True)
  summary = pipeline.run(config.curate, files, stage_dir, config.curate.cache_dir or os.path.join(stage_dir, "cache"))
  return {"stage": config.stage, "workdir": stage_dir, **summary["total"]}


def finished(stage_dir: str) -> bool:
  return os.path.exists(os.path.join(stage_dir, "summary.json"))


def output(config: ml_collections.ConfigDict, stage_dir: str) -> str:
  """The clean copies (comma-separated paths) a later stage's `stage:<name>` reads."""
  return ",".join(os.path.join(stage_dir, f.source, os.path.basename(f.path)) for f in _files(config))


def part(config: ml_collections.ConfigDict, stage_dir: str, name: str) -> str:
  """`stage:<name>/<source>`: the same clean copies, named by their source."""
  if name != config.source:
    raise ValueError(f"stage:{config.stage}/{name}: the stage curates source {config.source!r} only")
  return output(config, stage_dir)


def note(stage_dir: str) -> str | None:
  """Kept of read, and what removed the rest (the report's note)."""
  if not finished(stage_dir):
    return None
  with open(os.path.join(stage_dir, "summary.json"), encoding="utf-8") as f:
    total = json.load(f)["total"]
  removed = ", ".join(f"{n} {why}" for why, n in sorted(total.get("removed", {}).items()) if n)
  return f"kept {total['kept']} of {total['docs']} documents" + (f" (removed: {removed})" if removed else "")

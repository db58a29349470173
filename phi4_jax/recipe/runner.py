"""Runs a stage config, or a recipe of stages that hand their params and files to each other.

A recipe config has `stages` (names, in order) and one full stage config per name, each of a kind
in recipe/stages.py's registry. Stage i runs in W/<name>; unless its `init_from` is set, it starts
from the last stage before it that makes a model. A data stage's file (e.g. Pivotal Token Search's
W/<name>/pairs.jsonl) is what a later stage's source glob `stage:<name>` reads, and
`stage:<name>/<file>` reads its folder's <file>.jsonl (e.g. stage:refusal/sft). Every stage is
checked before the first runs; rerunning skips finished stages and resumes an interrupted one. The
run ends with recipe/report.py's summary, curves, held-out evaluations and samples.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from phi4_jax.recipe import report
from phi4_jax.recipe.stages import kind_of

STAGE_GLOB = "stage:"  # a data source glob `stage:<name>`: that data stage's output file


def finished(stage: ml_collections.ConfigDict, stage_dir: str) -> bool:
  """The stage is done in stage_dir (its kind's `finished`)."""
  return kind_of(stage).finished(stage, stage_dir)


def stage_dirs(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict, str]]:
  """[(stage name, stage config, its workdir)] in order; ("", config, workdir) for a plain stage."""
  if "stages" not in config:
    return [("", config, workdir)]
  return [(name, config[name], os.path.join(workdir, name)) for name in config.stages]


def stage_references(node: ml_collections.ConfigDict, prefix: str):
  """(config node, key, field name) of every `globs` (a data source's) or `seeds` (a synth type's)
  field under `node` that names a data stage's output (`stage:<name>[/<file>]`)."""
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from stage_references(value, f"{prefix}.{key}")
    elif key in ("globs", "seeds") and isinstance(value, str) and value.startswith(STAGE_GLOB):
      yield node, key, f"{prefix}.{key}"


def link(config: ml_collections.ConfigDict, workdir: str) -> dict[str, bool]:
  """Fills each stage's init_from (the last stage before it that makes a model) and resolves
  `stage:<name>` source globs and synth seeds to earlier data stages' files; {stage: whether its data
  exists}."""
  model, made, ready = "", {}, {}
  for name, stage, stage_dir in stage_dirs(config, workdir):
    try:
      kind = kind_of(stage, f"config.{name}")
    except ValueError as e:
      raise ValueError(f"stage {name}: {e}") from None
    if model and "init_from" in stage and not stage.init_from:
      with stage.unlocked():
        stage.init_from = model
    ready[name] = True
    for node, key, field in stage_references(stage, f"config.{name}"):
      wanted, _, part = node[key][len(STAGE_GLOB):].partition("/")
      if wanted not in made:
        raise ValueError(f"stage {name}: {field} names {node[key]!r}, but no data stage {wanted!r} runs before it")
      kind_made, stage_made, dir_made = made[wanted]
      path = _part(kind_made, stage_made, dir_made, part) if part else kind_made.output(stage_made, dir_made)
      node[key], ready[name] = path, ready[name] and all(os.path.exists(p) for p in path.split(","))
    if kind.makes_model:
      model = stage_dir
    else:
      made[name] = (kind, stage, stage_dir)
  return ready


def _part(kind, stage: ml_collections.ConfigDict, stage_dir: str, part: str) -> str:
  """`stage:<name>/<part>`: the kind's own `part`, else <part>.jsonl beside the stage's output."""
  if hasattr(kind, "part"):
    return kind.part(stage, stage_dir, part)
  return os.path.join(os.path.dirname(kind.output(stage, stage_dir)), f"{part}.jsonl")


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Every stage's config (a recipe's linked first, see link), before anything is written: a
  ValueError or FileNotFoundError names the field."""
  if "stages" not in config:
    kind_of(config).check(config, "config", first=True, data_ready=True)
    return
  for name in config.stages:
    if name not in config:
      raise ValueError(f"config.stages names {name!r}, but the recipe has no config.{name}")
  ready = link(config, workdir)
  for name in config.stages:
    try:
      kind_of(config[name], f"config.{name}").check(config[name], f"config.{name}",
                                                     first=name == config.stages[0], data_ready=ready[name])
    except ValueError as e:
      raise ValueError(f"stage {name}: {e}") from e


def run(config: ml_collections.ConfigDict, workdir: str, checked: bool = False) -> list[dict]:
  """Runs the stage or recipe in `workdir`; checked=True: check(config, workdir) has passed."""
  if "stages" not in config:  # (a stage checks itself as it starts)
    return [kind_of(config).run(config, workdir, "--config.")]
  if not checked:
    check(config, workdir)
  results = []
  for name, stage, stage_dir in stage_dirs(config, workdir):
    if finished(stage, stage_dir):
      logging.info("stage %s already finished in %s: skipped", name, stage_dir)
      results.append({"stage": name, "workdir": stage_dir, "skipped": True})
      continue
    results.append(kind_of(stage).run(stage, stage_dir, f"--config.{name}."))
    if results[-1].get("preempted"):
      break
  if jax.process_index() == 0:
    complete = not results[-1].get("preempted") and jax.process_count() == 1
    print(report.write(config, workdir, stage_dirs(config, workdir), evaluate=complete))
  return results

"""Runs a stage config, or a recipe of stages that hand their params to each other.

A recipe config has `stages` (names, in order) and one full stage config per name. Stage i runs in
W/<name>; unless its `init_from` is set, it starts from the last training stage before it. Data
stages (posttrain/stages.py: Pivotal Token Search, judge-guided pairs) sample from that model and
write W/<name>/pairs.jsonl, which a later stage's data source names as `stage:<name>`. Rerunning
skips finished stages and resumes an interrupted one. The run ends with train/report.py's summary,
curves, held-out DPO rewards and samples.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from phi4_jax.posttrain import stages as data_stages
from phi4_jax.store import checkpoint
from phi4_jax.train import report
from phi4_jax.train.config import validate
from phi4_jax.train.loop import train

STAGE_GLOB = "stage:"  # a data source glob `stage:<name>`: that data stage's pairs file


def finished(stage: ml_collections.ConfigDict, stage_dir: str) -> bool:
  """A training stage is done once its workdir holds a checkpoint at (or past) its last step; a
  data stage once it has written its summary."""
  if data_stages.is_generation(stage):
    return data_stages.finished(stage_dir)
  step = checkpoint.latest_step(stage_dir)
  return step is not None and step >= stage.steps


def stage_dirs(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict, str]]:
  """[(stage name, stage config, its workdir)] in order; ("", config, workdir) for a plain stage."""
  if "stages" not in config:
    return [("", config, workdir)]
  return [(name, config[name], os.path.join(workdir, name)) for name in config.stages]


def link(config: ml_collections.ConfigDict, workdir: str) -> dict[str, bool]:
  """Fills each stage's init_from (the last training stage before it) and resolves `stage:<name>`
  source globs to earlier data stages' pairs files; {stage: whether its data exists already}."""
  model, made, ready = "", {}, {}
  for name, stage, stage_dir in stage_dirs(config, workdir):
    if model and not stage.init_from:
      with stage.unlocked():
        stage.init_from = model
    ready[name] = True
    for source_name, source in (stage.data.sources.items() if "data" in stage else ()):
      if isinstance(source, ml_collections.ConfigDict) and source.get("globs", "").startswith(STAGE_GLOB):
        wanted = source.globs[len(STAGE_GLOB):]
        if wanted not in made:
          raise ValueError(f"stage {name}: config.{name}.data.sources.{source_name}.globs names "
                           f"{source.globs!r}, but no data stage {wanted!r} runs before it")
        source.globs, ready[name] = made[wanted], ready[name] and os.path.exists(made[wanted])
    if data_stages.is_generation(stage):
      made[name] = os.path.join(stage_dir, data_stages.PAIRS)
    else:
      model = stage_dir
  return ready


def _check(config: ml_collections.ConfigDict, ready: dict[str, bool]) -> None:
  """Every stage's config, before the first one runs."""
  for name in config.stages:
    try:
      if data_stages.is_generation(config[name]):
        data_stages.validate(config[name], f"config.{name}")
      else:
        validate(config[name], jax.device_count(), check_init_from=name == config.stages[0],
                 check_files=ready[name])
    except ValueError as e:
      raise ValueError(f"stage {name}: {e}") from e


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Every stage's config (a recipe's linked first, see link), before anything is written: a
  ValueError or FileNotFoundError names the field."""
  if "stages" not in config:
    if data_stages.is_generation(config):
      data_stages.validate(config)
    else:
      validate(config, jax.device_count())
    return
  for name in config.stages:
    if name not in config:
      raise ValueError(f"config.stages names {name!r}, but the recipe has no config.{name}")
  _check(config, link(config, workdir))


def run(config: ml_collections.ConfigDict, workdir: str, checked: bool = False) -> list[dict]:
  """Runs the stage or recipe in `workdir`; checked=True: check(config, workdir) has passed."""
  if "stages" not in config:  # (train and data_stages.run check their stage first)
    return [data_stages.run(config, workdir) if data_stages.is_generation(config) else train(config, workdir)]
  if not checked:
    check(config, workdir)
  results = []
  for name, stage, stage_dir in stage_dirs(config, workdir):
    if finished(stage, stage_dir):
      logging.info("stage %s already finished in %s: skipped", name, stage_dir)
      results.append({"stage": name, "workdir": stage_dir, "skipped": True})
    elif data_stages.is_generation(stage):
      results.append({**data_stages.run(stage, stage_dir), "preempted": False})
    else:
      result = train(stage, stage_dir, flag_prefix=f"--config.{name}.")
      results.append(result)
      if result["preempted"]:
        break
  if jax.process_index() == 0:
    complete = not results[-1].get("preempted") and jax.process_count() == 1
    print(report.write(config, workdir, stage_dirs(config, workdir), evaluate=complete))
  return results

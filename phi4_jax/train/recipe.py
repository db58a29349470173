"""Runs a stage config, or a recipe of stages that hand their params to each other.

A recipe config has `stages` (names, in order) and one full stage config per name. Stage i runs in
W/<name>; unless its `init_from` is set, it starts from stage i-1's workdir. Rerunning skips stages
whose final checkpoint exists and resumes an interrupted one. The run ends with train/report.py's
summary, curves, held-out DPO rewards and samples.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from phi4_jax.train import checkpoint, report
from phi4_jax.train.config import validate
from phi4_jax.train.loop import train


def finished(stage: ml_collections.ConfigDict, stage_dir: str) -> bool:
  """A stage is done once its workdir holds a checkpoint at (or past) its last step."""
  step = checkpoint.latest_step(stage_dir)
  return step is not None and step >= stage.steps


def stage_dirs(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict, str]]:
  """[(stage name, stage config, its workdir)] in order; ("", config, workdir) for a plain stage."""
  if "stages" not in config:
    return [("", config, workdir)]
  return [(name, config[name], os.path.join(workdir, name)) for name in config.stages]


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  if "stages" not in config:
    return [train(config, workdir)]
  for name in config.stages:
    if name not in config:
      raise ValueError(f"config.stages names {name!r}, but the recipe has no config.{name}")
  previous = ""
  for name, stage, stage_dir in stage_dirs(config, workdir):  # each starts from the one before
    if previous and not stage.init_from:
      with stage.unlocked():
        stage.init_from = previous
    previous = stage_dir
  for name in config.stages:  # every stage's config is checked before the first one trains
    try:
      validate(config[name], jax.device_count(), check_init_from=name == config.stages[0])
    except ValueError as e:
      raise ValueError(f"stage {name}: {e}") from e
  results = []
  for name, stage, stage_dir in stage_dirs(config, workdir):
    if finished(stage, stage_dir):
      logging.info("stage %s already finished in %s: skipped", name, stage_dir)
      results.append({"stage": name, "workdir": stage_dir, "skipped": True})
    else:
      result = train(stage, stage_dir, flag_prefix=f"--config.{name}.")
      results.append(result)
      if result["preempted"]:
        break
  if jax.process_index() == 0:
    complete = not results[-1].get("preempted") and jax.process_count() == 1
    print(report.write(config, workdir, stage_dirs(config, workdir), evaluate=complete))
  return results

"""The one protocol of a recipe's stages, and the registry of stage kinds.

A stage config's `kind` picks its implementation: none (or "train") is a training stage of the one
loop (train/loop.py); "pts", "judge" and "refusal" are data stages (posttrain/stages.py) that sample
from the model before them and write a pairs file; "synth" runs a synthetic data pipeline
(synth/stage.py); "curate" curates a source's files (curate/stage.py). A new kind is a module with an object that has the
members of `Stage` below, plus `register("kind", TheStage())`; the runner and the report only
speak this protocol.
"""

from __future__ import annotations

import os
from typing import Protocol

import jax
import ml_collections

from phi4_jax.curate import stage as curate_stage
from phi4_jax.posttrain import stages as data_stages
from phi4_jax.store import checkpoint
from phi4_jax.synth import stage as synth_stage
from phi4_jax.train.config import validate
from phi4_jax.train.loop import train

TRAIN = "train"  # the kind of a stage config without `kind`


class Stage(Protocol):
  makes_model: bool  # True: later stages start from its params (their init_from); False: it makes data

  def check(self, config: ml_collections.ConfigDict, prefix: str, first: bool, data_ready: bool) -> None:
    """Every field, before the recipe's first stage runs (ValueError naming `prefix`.field). first:
    no stage runs before it (its init_from must exist now); data_ready: the files its sources name
    exist (an earlier data stage may make them later)."""

  def finished(self, config: ml_collections.ConfigDict, stage_dir: str) -> bool:
    """Done in stage_dir: a rerun skips it."""

  def run(self, config: ml_collections.ConfigDict, stage_dir: str, flag_prefix: str) -> dict:
    """Runs (or resumes) it in stage_dir; a result with "preempted": True stops the recipe."""

  def output(self, config: ml_collections.ConfigDict, stage_dir: str) -> str:
    """The file a later source's glob `stage:<name>` reads ("" for a stage that makes a model)."""

  def note(self, config: ml_collections.ConfigDict, stage_dir: str) -> str | None:
    """The report's notes on a data stage (None: the report reads a training stage's metrics)."""

  # A data stage may also have part(config, stage_dir, part): what `stage:<name>/<part>` reads
  # (without it, <part>.jsonl beside its output).


class TrainStage:
  """A training stage: config.objective's loss in the one loop."""

  makes_model = True

  def check(self, config, prefix, first, data_ready) -> None:
    validate(config, jax.device_count(), check_init_from=first, check_files=data_ready)

  def finished(self, config, stage_dir) -> bool:
    """Once its workdir holds a checkpoint at (or past) its last step."""
    step = checkpoint.latest_step(stage_dir)
    return step is not None and step >= config.steps

  def run(self, config, stage_dir, flag_prefix) -> dict:
    return train(config, stage_dir, flag_prefix=flag_prefix)

  def output(self, config, stage_dir) -> str:
    return ""

  def note(self, config, stage_dir) -> str | None:
    return None


class DataStage:
  """A data stage kept in its own module, which has validate(config, prefix), finished(stage_dir),
  run(config, stage_dir), output(config, stage_dir), note(stage_dir) and may have part(config,
  stage_dir, part): posttrain/stages.py (pts, judge, refusal: W/pairs.jsonl from the model before
  them), synth/stage.py (W/<type>.jsonl per type), curate/stage.py (W/<source>/<file> clean copies).
  Each is done once its W/summary.json exists."""

  makes_model = False

  def __init__(self, module):
    self.module = module
    if hasattr(module, "part"):  # (else the runner's default: <part>.jsonl beside the output)
      self.part = module.part

  def check(self, config, prefix, first, data_ready) -> None:
    self.module.validate(config, prefix)

  def finished(self, config, stage_dir) -> bool:
    return self.module.finished(stage_dir)

  def run(self, config, stage_dir, flag_prefix) -> dict:
    return {**self.module.run(config, stage_dir), "preempted": False}

  def output(self, config, stage_dir) -> str:
    return self.module.output(config, stage_dir)

  def note(self, config, stage_dir) -> str | None:
    return self.module.note(stage_dir)


KINDS: dict[str, Stage] = {}


def register(kind: str, stage: Stage) -> Stage:
  """Makes `kind` a stage config's `kind` (a new name)."""
  if kind in KINDS and KINDS[kind] is not stage:
    raise ValueError(f"stage kind {kind!r} is registered already")
  KINDS[kind] = stage
  return stage


register(TRAIN, TrainStage())
_PAIRS = DataStage(data_stages)
register("pts", _PAIRS)
register("judge", _PAIRS)
register("refusal", _PAIRS)  # (its W/sft.jsonl too; W/pairs.jsonl is what `stage:<name>` reads)
register("synth", DataStage(synth_stage))
register("curate", DataStage(curate_stage))


def kind_of(config: ml_collections.ConfigDict, prefix: str = "config") -> Stage:
  """The implementation of a stage config (ValueError naming `prefix`.kind when none is registered)."""
  kind = config.get("kind", TRAIN)
  if kind not in KINDS:
    raise ValueError(f"{prefix}.kind: {kind!r} is not a stage kind (known: {', '.join(KINDS)})")
  return KINDS[kind]

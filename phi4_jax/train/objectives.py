"""What a stage plugs into the one loop (train/loop.py): an objective, named by config.objective.

  lm:  next-token cross-entropy on the targets loss_mask marks: every token in pretraining and
       midtraining, the assistant turns in SFT (here)
  dpo: the DPO loss of packed (prompt + chosen, prompt + rejected) segments against a frozen
       reference (posttrain/dpo.py's DPO)

An objective is one object with the members of `Objective` below: the record formats its loss reads
(validate refuses other sources), its settings group in a stage config and their check, its loss,
its metric fields, its step's abstract batch (the dry run), its frozen extras (the loop), and its
notes in a recipe's report. A new one is a module plus `register(TheObjective())`. The step is
compiled for source_names(config), the loop's and the dry run's alike.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp

from phi4_jax.model.output import per_source


class Objective(Protocol):
  name: str  # config.objective's value
  formats: tuple[str, ...]  # the record formats (data.stage_format) whose rows its loss reads
  settings: str  # its settings group in a stage config (config.<settings>); "" for none

  def check(self, config) -> None:
    """Its settings group and what else it needs of the stage config (ValueError naming the field)."""

  def loss(self, config, cfg, mesh, num_sources: int) -> Callable:
    """(params, batch, extras) -> (loss_sum, sums); the step divides by sums["denominator"]."""

  def summarize(self, sums: dict, steps: int, source_names) -> dict:
    """A metric row's fields from the summed sums of `steps` steps."""

  def abstract_batch(self, config, rows: tuple[int, int], sharding) -> dict:
    """The step's global batch [M, B/M, ...] as ShapeDtypeStructs (what the loop feeds it)."""

  def abstract_extras(self, config, params, param_shardings) -> tuple[dict, dict]:
    """(extras, their shardings) the step takes besides params and batch, for the dry run."""

  def prepare(self, run, make_iterator: Callable, to_global: Callable) -> None:
    """Sets the run's frozen extras (run.extras, run.extra_shardings) or wraps run.data_iter."""

  def notes(self, rows: list[dict]) -> list[str]:
    """A recipe report's notes on a stage's metric rows."""

  def heldout(self, recipe, stage, stage_dir: str) -> dict | None:
    """A recipe's held-out evaluation of the stage's final model (W/heldout.json), or None."""


class NextToken:
  """lm: next-token cross-entropy (train/step.py's fused loss)."""

  name, formats, settings = "lm", ("text", "chat"), ""

  def check(self, config) -> None:
    pass

  def loss(self, config, cfg, mesh, num_sources: int) -> Callable:
    from phi4_jax.train import step
    return functools.partial(step.lm_loss_sums, cfg=cfg, num_sources=num_sources,
                             loss_chunk=config.loss_chunk, mesh=mesh)

  def summarize(self, sums: dict, steps: int, source_names) -> dict:
    return {"loss_per_source": per_source(sums, "source_tokens", source_names),
            "target_tokens_per_step": float(sums["denominator"]) / steps}

  def abstract_batch(self, config, rows: tuple[int, int], sharding) -> dict:
    from phi4_jax.data.packing import ROW_FIELDS
    return {name: jax.ShapeDtypeStruct((*rows, config.seq_len), jnp.int32, sharding=sharding)
            for name in ROW_FIELDS}

  def abstract_extras(self, config, params, param_shardings) -> tuple[dict, dict]:
    return {}, {}

  def prepare(self, run, make_iterator: Callable, to_global: Callable) -> None:
    pass

  def notes(self, rows: list[dict]) -> list[str]:
    return []

  def heldout(self, recipe, stage, stage_dir: str) -> dict | None:
    return None


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
  """Makes `objective` a value of config.objective (its name must be new)."""
  if objective.name in OBJECTIVES and OBJECTIVES[objective.name] is not objective:
    raise ValueError(f"objective {objective.name!r} is registered already")
  OBJECTIVES[objective.name] = objective
  return objective


def get(name: str) -> Objective:
  """The objective config.objective names (ValueError naming the field and the known ones)."""
  if name not in OBJECTIVES:
    raise ValueError(f"config.objective: {name!r} is not an objective (known: {', '.join(OBJECTIVES)})")
  return OBJECTIVES[name]


def _register_builtin() -> None:
  from phi4_jax.posttrain import dpo
  register(NextToken())
  register(dpo.DPO())


_register_builtin()


@dataclasses.dataclass(frozen=True)
class Bound:
  """An objective with a stage's settings bound: what the loop and the dry run compile."""
  objective: Objective
  loss_fn: Callable  # (params, batch, extras) -> (loss_sum, sums)

  def summarize(self, sums: dict, steps: int, source_names) -> dict:
    return self.objective.summarize(sums, steps, source_names)


def source_names(config) -> tuple[str, ...]:
  """The sources the step sums its loss over: every source of config.data.sources' nested mixtures
  (data/planner.py's leaves, in the order the data pipeline numbers them)."""
  from phi4_jax.data.planner import leaves
  return tuple(leaf.name for leaf in leaves(config.data.sources))


def make(config, cfg, mesh) -> Bound:
  """config.objective's objective with the stage's settings and source count bound."""
  objective = get(config.objective)
  return Bound(objective, objective.loss(config, cfg, mesh, len(source_names(config))))

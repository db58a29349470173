"""What a stage plugs into the one loop (train/loop.py): its loss, its metric rows, its frozen extras.

  lm:  next-token cross-entropy on the targets loss_mask marks: every token in pretraining and
       midtraining, the assistant turns in SFT
  dpo: the DPO loss of packed (prompt + chosen, prompt + rejected) segments against a frozen
       reference, the stage's init_from params (or their log-probs, precomputed into the workdir)

The data each objective reads comes from `data.make_train_iterator`, chosen by the sources' format
(FORMATS: the formats each objective reads; train/config.py's validate refuses any other). The step is
compiled for source_names(config), the loop's and the dry run's alike.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

OBJECTIVES = ("lm", "dpo")
# objective -> the record formats (data/check.py's stage_format) whose rows its loss reads
FORMATS = {"lm": ("text", "chat"), "dpo": ("pairs",)}


@dataclasses.dataclass(frozen=True)
class Objective:
  loss_fn: Callable  # (params, batch, extras) -> (loss_sum, sums); sums["denominator"] divides
  summarize: Callable  # (summed sums of a window, steps, source names) -> metric row fields
  uses_reference: bool = False  # extras["reference"]: the frozen init_from params


def _per_source(sums: dict, count_key: str, source_names) -> dict[str, float]:
  count = np.asarray(sums[count_key])
  loss = np.asarray(sums["source_loss_sum"]) / np.maximum(count, 1)
  return {n: float(loss[i]) for i, n in enumerate(source_names) if count[i] > 0}


def _lm_summary(sums: dict, steps: int, source_names) -> dict:
  return {"loss_per_source": _per_source(sums, "source_tokens", source_names),
          "target_tokens_per_step": float(sums["denominator"]) / steps}


def _dpo_summary(sums: dict, steps: int, source_names) -> dict:
  pairs = max(float(sums["denominator"]), 1.0)
  means = {name: float(sums[name]) / pairs
           for name in ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")}
  return {**means, "loss_per_source": _per_source(sums, "source_pairs", source_names),
          "pairs_per_step": float(sums["denominator"]) / steps}


def source_names(config) -> tuple[str, ...]:
  """The sources the step sums its loss over: every source of config.data.sources' nested mixtures
  (data/planner.py's leaves, in the order the data pipeline numbers them)."""
  from phi4_jax.data.planner import leaves
  return tuple(leaf.name for leaf in leaves(config.data.sources))


def make(config, cfg, mesh) -> Objective:
  """The objective config.objective names, with the stage's settings and source count bound."""
  num_sources = len(source_names(config))
  if config.objective == "dpo":
    from phi4_jax.posttrain import dpo
    d = config.dpo
    loss_fn = functools.partial(dpo.dpo_loss_sums, cfg=cfg, beta=d.beta, label_smoothing=d.label_smoothing,
                                loss_type=d.loss_type, num_sources=num_sources, mesh=mesh,
                                chunk=config.loss_chunk or 256)
    return Objective(loss_fn, _dpo_summary, uses_reference=not d.precompute_reference)
  from phi4_jax.train import step
  loss_fn = functools.partial(step.lm_loss_sums, cfg=cfg, num_sources=num_sources,
                              loss_chunk=config.loss_chunk, mesh=mesh)
  return Objective(loss_fn, _lm_summary)

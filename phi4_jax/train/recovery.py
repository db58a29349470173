"""Recovering a stage that diverged or whose checkpoint is bad, the way large runs do.

PaLM restarted about 100 steps before a loss spike and skipped 200-500 batches. Here:
`config.resume_step` restores a chosen kept step instead of the latest (the later step directories
are moved aside to W/checkpoints_after_<step>, never deleted) and `config.skip_batches` then advances
the data iterator past the batches around the spike; each recovery is a line of W/recovery.jsonl.
`keep_period` keeps sparse older checkpoints to go back to. A divergence (a non-finite loss or grad
norm, or with `spike_factor` a loss far above its running mean) stops the run before its state is
saved, with the exact command that recovers it.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import shlex
import sys
import time

import jax

from phi4_jax.store import checkpoint, workdir as workdir_lib

SPIKE_WINDOW = 20  # steps in the running mean that spike_factor compares a loss with


class DivergedError(FloatingPointError):
  """Training stopped on a divergence; the message says how to recover."""


class NonFiniteLossError(DivergedError):
  pass


class LossSpikeError(DivergedError):
  pass


class CheckpointError(RuntimeError):
  """A checkpoint could not be read or written; the message names the step directory."""


def command_line(overrides: dict[str, object]) -> str:
  """The command that started this process with `overrides` set (or replaced) as flags."""
  program = os.path.basename(sys.argv[0]) if sys.argv else ""
  if sys.argv and (sys.argv[0].endswith(os.path.join("phi4_jax", "main.py")) or program == "phi4-jax"):
    keep = [a for a in sys.argv[1:] if not any(a.startswith(f"{flag}=") for flag in overrides)]
    start = ("phi4-jax " if program == "phi4-jax" else "python -m phi4_jax.main ") + shlex.join(keep)
  else:  # (called from Python, not the command line)
    start = "python -m phi4_jax.main <the stage's flags>"
  return " ".join([start, *(f"{flag}={value}" for flag, value in overrides.items())])


def suggestion(kept_steps: list[int], bad_step: int) -> tuple[int, int] | None:
  """(resume_step, skip_batches): the kept step before the last good one (which may already hold
  the update that diverged), skipping every batch from it up to and including the bad step."""
  good = [s for s in kept_steps if s < bad_step]
  if not good:
    return None
  resume = good[-2] if len(good) >= 2 else good[-1]
  return resume, bad_step - resume


def divergence_message(what: str, bad_step: int, workdir: str, kept_steps: list[int],
                       flag_prefix: str) -> str:
  suggested = suggestion(kept_steps, bad_step)
  text = f"{what} at step {bad_step} of {workdir}; nothing past step {bad_step - 1} was saved."
  if suggested is None:
    return text + " No checkpoint is kept before it: lower config.optimizer.peak_lr and start again."
  resume, skip = suggested
  cmd = command_line({f"{flag_prefix}resume_step": resume, f"{flag_prefix}skip_batches": skip})
  return (f"{text} Kept steps: {kept_steps}. To recover from step {resume}, skipping the {skip} "
          f"batches up to the spike (and optionally with a lower {flag_prefix}optimizer.peak_lr):\n"
          f"  {cmd}")


def check_step(loss: float, grad_norm: float, step: int, recent: collections.deque, factor: float,
               fail) -> None:
  """Calls fail(what) on a non-finite loss or grad norm, or a loss over factor x the running mean."""
  if not (math.isfinite(loss) and math.isfinite(grad_norm)):
    fail(NonFiniteLossError, f"non-finite loss ({loss}) or grad norm ({grad_norm})")
  if factor and len(recent) == recent.maxlen and loss > factor * (sum(recent) / len(recent)):
    fail(LossSpikeError, f"loss spike: {loss:.4g} is over spike_factor={factor} x the mean of the "
         f"last {len(recent)} losses ({sum(recent) / len(recent):.4g})")
  recent.append(loss)


def new_window() -> collections.deque:
  return collections.deque(maxlen=SPIKE_WINDOW)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def apply_resume_step(config, workdir: str, flag_prefix: str) -> str | None:
  """With config.resume_step, moves the kept steps after it aside (once: a rerun of the same
  command that has saved past it resumes normally); returns the folder they went to."""
  if config.resume_step < 0:
    return None
  steps = checkpoint.all_steps(workdir)
  if steps and checkpoint.read_meta(workdir, steps[-1]).get("resumed_from") == config.resume_step:
    return None  # this recovery already ran and saved past its step: resume as usual
  if config.resume_step not in steps:
    raise ValueError(f"{flag_prefix}resume_step={config.resume_step}: {workdir} keeps steps {steps}")
  moved = checkpoint.set_aside(workdir, config.resume_step) if jax.process_index() == 0 else None
  _sync("phi4_jax_resume_step")
  if moved:
    logging.warning("resume_step %d: moved the later checkpoints of %s to %s", config.resume_step,
                    workdir, moved)
  return moved


def skip_batches(run, restored_step: int, moved: str | None) -> None:
  """After restoring config.resume_step, reads and drops config.skip_batches batches; logs which."""
  config = run.config
  if config.resume_step != restored_step or not (config.skip_batches or moved):
    return
  before = run.data_iter.progress()
  for i in range(config.skip_batches):
    if next(run.data_iter, None) is None:
      raise RuntimeError(f"config.skip_batches={config.skip_batches}: the data ran out after {i}")
  record = {"time": time.time(), "resume_step": restored_step, "skip_batches": config.skip_batches,
            "skipped_data_of_steps": [restored_step + 1, restored_step + config.skip_batches],
            "set_aside": moved, "data_before": before, "data_after": run.data_iter.progress()}
  skipped = (f"skipped {config.skip_batches} batches (the data of steps {restored_step + 1}-"
             f"{restored_step + config.skip_batches})" if config.skip_batches else "skipped no batch")
  logging.warning("resumed from step %d (config.resume_step) and %s", restored_step, skipped)
  if run.primary:
    with open(workdir_lib.path(run.workdir, workdir_lib.RECOVERY), "a", encoding="utf-8") as f:
      f.write(json.dumps(record, default=float) + "\n")

"""Run metrics: W/metrics.jsonl, TensorBoard event files, a terminal progress bar, and MFU."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from typing import Any

import jax
from flax import traverse_util

from phi4_jax.store import atomic
from phi4_jax.store import workdir as workdir_lib

# Dense bf16 peak FLOP/s per device (no sparsity), keyed by a substring of jax's device_kind.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12,
    "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v4": 275e12,
}


def peak_flops_per_device(override: float = 0.0) -> float | None:
  """The config's override if set, else the table's entry for this device kind, else None."""
  if override > 0:
    return float(override)
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """Rows of W/metrics.jsonl, one per step: rows of the same step are joined (an evaluation's row
  joins its step's training row) and the later one wins a field both have (a resumed run)."""
  path = workdir_lib.path(workdir, workdir_lib.METRICS)
  if not os.path.exists(path):
    return []
  rows = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows[row["step"]] = {**rows.get(row["step"], {}), **row}
  return [rows[s] for s in sorted(rows)]


def median_tokens_per_s(rows: list[dict]) -> float | None:
  """The median tokens/s of metric rows, leaving out each run's first row (`compile_s`: its steps
  began with a compile or a restore) where others have one; None without any."""
  timed = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s") is not None]
  steady = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s") is not None and "compile_s" not in r]
  return statistics.median(steady or timed) if timed else None


class ProgressBar:
  """`step 120/500 [#####.....] loss 3.21 | 4,100 tok/s | ETA 2m10s` on one rewritten line.

  The rate counts only steps this run took after its first update: restored steps (start, the step
  a resumed run begins at) and the first step's compile time are left out.
  """

  def __init__(self, total: int, start: int, tokens_per_step: int, stream=sys.stderr, width: int = 24):
    self.total, self.start, self.tokens_per_step = total, start, tokens_per_step
    self.stream, self.width = stream, width
    self._clock: tuple[int, float] | None = None  # (step, time.monotonic()) at the first update

  def _rate(self, step: int) -> float:
    """Steps per second since the first update (0.0 until a step has run after it); the first
    call starts the clock."""
    now = time.monotonic()
    if self._clock is None:
      self._clock = (step, now)
    first_step, t0 = self._clock
    return (step - first_step) / (now - t0) if step > first_step and now > t0 else 0.0

  def update(self, step: int, text: str) -> None:
    rate = self._rate(step)
    filled = int(self.width * step / max(self.total, 1))
    if rate > 0:
      eta = (self.total - step) / rate
      speed, eta_text = f"{rate * self.tokens_per_step:,.0f}", f"{int(eta // 60)}m{int(eta % 60):02d}s"
    else:
      speed, eta_text = "?", "?"
    line = (f"\rstep {step}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] {text} | "
            f"{speed} tok/s | ETA {eta_text}")
    self.stream.write(line)
    self.stream.flush()

  def close(self) -> None:
    self.stream.write("\n")
    self.stream.flush()


class MetricsWriter:
  """Writes from the primary process only; other processes get a writer that does nothing."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True, start_step: int = 0):
    """start_step: the step the run resumes from; rows of later steps (a killed run's, which this
    one redoes) are dropped from metrics.jsonl and purged from TensorBoard first."""
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    path = workdir_lib.path(workdir, workdir_lib.METRICS)
    _drop_rows_after(path, start_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only the primary process writes
      self._tb = SummaryWriter(workdir_lib.path(workdir, workdir_lib.TENSORBOARD),
                               purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **scalars}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in _flatten(scalars).items():
        self._tb.add_scalar(name, value, step)
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites metrics.jsonl without the rows of steps after `step` (and a line a kill cut short)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      if line.endswith("\n") and json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue
  if kept != lines:
    atomic.write_text(path, "".join(kept))


def _flatten(tree: dict) -> dict[str, float]:
  """TensorBoard's scalars: the finite numbers of a nested row, named by their "a/b" paths."""
  return {name: float(value) for name, value in traverse_util.flatten_dict(tree, sep="/").items()
          if isinstance(value, (int, float)) and math.isfinite(value)}

"""A running stage's metric rows (W/metrics.jsonl, TensorBoard) and its progress bar.

Every `log_every` steps a row holds the mean loss of the steps since the last row, the LR, grad
norm, tokens/s and MFU, the objective's own fields (objectives.py: loss per source, target tokens,
DPO rewards) and the data iterator's progress. Throughput is honest whether the backend runs a step
asynchronously (the host dispatches step N + 1 while N runs) or inside its dispatch (as XLA's CPU
client may): a row's time runs from when the step before its first finished to when its last
finished, a step finishing when its dispatch returned if its metrics were ready then, else when they
have been read. A run's first step (compile, restore and all) is left out of its row's tokens/s
and MFU (None when the row holds only that step; the compile time is logged on its own as
`compile_s`); an evaluation's time is left out of the next row's. A resumed run's writer first drops the rows of the steps it will redo
(metrics.MetricsWriter), so every step has one row: the one of the run that continued.
"""

from __future__ import annotations

import json
import logging
import time

import jax
import numpy as np

from phi4_jax import model as model_lib
from phi4_jax.train import metrics as metrics_lib
from phi4_jax.train.optimizer import lr_schedule


class StepLogger:
  """Metric rows every config.log_every steps and the progress bar, from the primary process."""

  def __init__(self, run, start: int, data):
    config = run.config
    self.run, self.data = run, data  # data: the iterator whose progress() the rows report
    self.tokens_per_step = config.global_batch_size * config.seq_len
    self.flops = model_lib.flops_per_token(run.cfg, config.seq_len)
    self.peak = metrics_lib.peak_flops_per_device(config.peak_flops_per_device)
    self.schedule = lr_schedule(config.optimizer, config.steps)
    self.writer = metrics_lib.MetricsWriter(run.workdir, enabled=run.primary,
                                            tensorboard=config.tensorboard, start_step=start)
    self.bar = metrics_lib.ProgressBar(config.steps, start, self.tokens_per_step) if run.primary else None
    self.window = _new_window()
    self.last_row: dict = {}
    self.compile_s: float | None = None  # for the next row
    self.returned: dict[int, float] = {}  # step -> when its dispatch returned, the step done
    self.finished = None  # when the last step read finished

  def dispatched(self, step: int, ran: bool) -> None:
    """The dispatch of `step` returned; ran: its metrics were ready then (the backend ran it inside)."""
    if ran:
      self.returned[step] = time.monotonic()

  def compiled(self, seconds: float) -> None:
    """The first step took `seconds` to compile: its row's time leaves them out."""
    logging.info("compiled the train step in %.1f s", seconds)
    self.window["untimed"] = True  # (the clock starts once this first step has run)
    self.compile_s = seconds

  def step(self, step: int, m: dict) -> None:
    """Step `step`'s metrics, just read."""
    window = self.window
    window["steps"] += 1
    finished = max(self.returned.pop(step, time.monotonic()), self.finished or 0.0)
    if not window.pop("untimed", False):  # (a run's first step is not timed)
      window["timed"] += 1
      window["t"] = window["t"] if window["t"] is not None else self.finished
    self.finished = finished
    window["loss"] += float(m["loss"])
    for name, value in m.items():
      if name not in ("loss", "grad_norm"):
        window["sums"][name] = window["sums"].get(name, 0.0) + np.asarray(value, np.float64)
    if step % self.run.config.log_every == 0 or step == self.run.config.steps:
      self.last_row = self._row(step, m)
      self.writer.write(step, self.last_row)
      self.window = _new_window()
      self.returned = {s: t for s, t in self.returned.items() if s > step}
    if self.bar:
      self.bar.update(step, f"loss {float(m['loss']):.3f}")

  def _row(self, step: int, m: dict) -> dict:
    window = self.window
    if window["timed"] and window["t"] is not None:
      elapsed = self.finished - window["t"]
      tokens_per_s = window["timed"] * self.tokens_per_step / max(elapsed, 1e-9)
    else:
      tokens_per_s = None
    row = {
        "loss": window["loss"] / window["steps"],
        "lr": float(self.schedule(step - 1)),
        "grad_norm": float(m["grad_norm"]),
        "tokens_per_s": tokens_per_s,
        "mfu": (self.flops * tokens_per_s / (self.peak * jax.device_count())) if self.peak and tokens_per_s else None,
        **self.run.objective.summarize(window["sums"], window["steps"],
                                       list(self.run.data_iter.source_names)),
        "data": self.data.progress(),
    }
    if self.compile_s is not None:
      row["compile_s"], self.compile_s = self.compile_s, None
    return json.loads(json.dumps(row, default=float))

  def evaluation(self, step: int, results: dict) -> None:
    """An evaluation's row: {"step", "eval": {task: metrics}}; read_metrics joins it to the step's
    training row (config.eval.every is a multiple of log_every). Its time is left out of the next
    row's tokens/s."""
    self.finished = time.monotonic()
    row = {"eval": json.loads(json.dumps(results, default=float))}
    self.writer.write(step, row)
    self.last_row = {**self.last_row, **row}

  def close(self) -> None:
    self.writer.close()
    if self.bar:
      self.bar.close()


def _new_window() -> dict:
  """Sums over the steps since the last metrics row."""
  return {"t": None, "steps": 0, "timed": 0, "loss": 0.0, "sums": {}}  # t: when the step before it finished

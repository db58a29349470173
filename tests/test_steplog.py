"""Metric rows time their own steps, whether the backend runs a step inside its dispatch (XLA's CPU
client may) or while the host dispatches the next (issue #24, item 11: a row read 255,691 tokens/s
on a machine doing ~700). A fake clock plays both timelines; the loop's calls are the real ones."""

import types

import pytest

from phi4_jax import configs, model
from phi4_jax.train import steplog
from phi4_jax.train.metrics import read_metrics

STEP_S = 2.0  # each step's run time on the fake clock


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _logger(tmp_path, monkeypatch, steps):
  config = configs.load("experiments/pretrain.py:test", {"steps": steps, "log_every": 1, "tensorboard": False})
  run = types.SimpleNamespace(
      config=config, cfg=model.ModelConfig.preset("test"), workdir=str(tmp_path), primary=True,
      objective=types.SimpleNamespace(summarize=lambda sums, n, names: {}),
      data_iter=types.SimpleNamespace(source_names=()))
  clock = Clock()
  monkeypatch.setattr(steplog.time, "monotonic", clock)
  logger = steplog.StepLogger(run, 0, types.SimpleNamespace(progress=lambda: {}))
  logger.bar = None
  return logger, clock, config.global_batch_size * config.seq_len


@pytest.mark.parametrize("mode", ["inside dispatch", "asynchronous"])
def test_each_row_times_its_own_step(tmp_path, monkeypatch, mode):
  """The loop's order: dispatch step N, then read step N - 1's metrics; the last one is read at the end."""
  logger, clock, tokens = _logger(tmp_path, monkeypatch, steps=4)
  m = {"loss": 1.0, "grad_norm": 1.0}
  done = {}  # step -> when it finished running
  def read(step):  # (reading a step's metrics waits for it)
    clock.now = max(clock.now, done[step])
    logger.step(step, m)

  for step in range(1, 5):
    start = clock.now
    if mode == "inside dispatch":  # the step runs before its dispatch returns
      clock.now += (5.0 if step == 1 else 0.0) + STEP_S
      done[step] = clock.now
    else:  # it runs after the previous one, while the host goes on
      clock.now += 5.0 if step == 1 else 0.01
      done[step] = max(done.get(step - 1, 0.0), clock.now) + STEP_S
    logger.dispatched(step, ran=done[step] <= clock.now)
    if step == 1:
      logger.compiled(clock.now - start)
    else:
      read(step - 1)
  read(4)
  logger.close()
  rows = read_metrics(tmp_path)
  assert rows[0]["tokens_per_s"] is None and "compile_s" in rows[0]  # the compile's row times nothing
  assert [r["tokens_per_s"] for r in rows[1:]] == pytest.approx([tokens / STEP_S] * 3, rel=0.02)

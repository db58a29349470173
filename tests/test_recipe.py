"""README's main command: the colab recipe (pretrain -> midtrain) on this machine, then rerun.

Its time is a benchmark figure (README), not asserted here: a loaded CI machine must not fail it.
"""

import os
import subprocess
import sys

from phi4_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_S = 1800  # a subprocess timeout against hangs, far above the recipe's ~6 minutes


def _recipe(workdir, data_cache):
  # One CPU device, as on a fresh machine (conftest fakes 8 for the sharding tests).
  env = {**os.environ, "PHI4_JAX_CACHE": data_cache, "PYTHONPATH": REPO, "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "phi4_jax.main", "--config=experiments/recipe.py:colab",
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=HANG_S)


def test_colab_recipe_trains_both_stages_with_a_falling_loss(tmp_path, data_cache):
  workdir = tmp_path / "colab"
  out = _recipe(workdir, data_cache)
  assert out.returncode == 0, out.stderr[-5000:]

  pre, mid = read_metrics(workdir / "pretrain"), read_metrics(workdir / "midtrain")
  assert pre[-1]["step"] == 80 and mid[-1]["step"] == 12
  # From ~ln(100352) = 11.5 at initialization; the full vocabulary makes unigram statistics alone
  # worth several nats, so a working run falls far below it.
  assert pre[0]["loss"] > 10.0
  assert pre[-1]["loss"] < pre[0]["loss"] - 3.0
  assert mid[-1]["loss"] < pre[0]["loss"] - 3.0  # midtraining starts from pretraining's params
  assert set(pre[-1]["loss_per_source"]) == {"acquired", "code", "synthetic", "web", "web_rewrites"}
  assert (workdir / "report.png").stat().st_size > 10_000
  assert "| pretrain | 80 |" in out.stdout and "| midtrain | 12 |" in out.stdout
  assert "Samples from midtrain (greedy, up to 24 tokens):\n  'def fibonacci(n):' -> '" in out.stdout
  assert (workdir / "samples.md").read_text().count(" -> ") == 3

  rerun = _recipe(workdir, data_cache)
  assert rerun.returncode == 0, rerun.stderr[-5000:]
  assert rerun.stderr.count("already finished") == 2  # both stages skipped, nothing retrained
  assert read_metrics(workdir / "midtrain") == mid

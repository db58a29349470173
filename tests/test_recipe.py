"""README's main command: the colab recipe (pretrain -> midtrain -> sft -> dpo), then rerun.

Its time is a benchmark figure (README), not asserted here: a loaded CI machine must not fail it.
"""

import json
import math
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


def test_colab_recipe_runs_pretrain_midtrain_sft_dpo_and_dpo_ranks_heldout_pairs(tmp_path, data_cache):
  workdir = tmp_path / "colab"
  out = _recipe(workdir, data_cache)
  assert out.returncode == 0, out.stderr[-5000:]

  pre, mid, sft, dpo = (read_metrics(workdir / stage) for stage in ("pretrain", "midtrain", "sft", "dpo"))
  assert [rows[-1]["step"] for rows in (pre, mid, sft, dpo)] == [48, 12, 16, 16]
  # From ~ln(100352) = 11.5 at initialization; the full vocabulary makes unigram statistics alone
  # worth several nats, so a working run falls far below it.
  assert pre[0]["loss"] > 10.0
  assert pre[-1]["loss"] < pre[0]["loss"] - 3.0
  assert mid[-1]["loss"] < pre[0]["loss"] - 3.0  # midtraining starts from pretraining's params
  assert set(pre[-1]["loss_per_source"]) == {"acquired", "code", "synthetic", "web", "web_rewrites"}
  assert sft[-1]["loss"] < sft[0]["loss"] and all(r["target_tokens_per_step"] > 0 for r in sft)
  # The policy starts as its reference: loss ln 2 at step 1 (tests/test_posttrain_stages.py checks
  # it exactly); this row is the mean of the first log_every steps.
  assert abs(dpo[0]["loss"] - math.log(2)) < 0.02
  assert dpo[-1]["loss"] < dpo[0]["loss"]
  heldout = json.loads((workdir / "heldout.json").read_text())["dpo"]
  assert heldout["pairs"] >= 100 and heldout["reward_accuracy"] > 0.5, heldout
  assert (workdir / "report.png").stat().st_size > 10_000
  for row in ("| pretrain | 48 |", "| midtrain | 12 |", "| sft | 16 |", "| dpo | 16 |", "held-out reward acc"):
    assert row in out.stdout, out.stdout
  assert "Samples from dpo (greedy, up to 24 tokens):\n  'def fibonacci(n):' -> '" in out.stdout
  assert (workdir / "samples.md").read_text().count(" -> ") == 3

  rerun = _recipe(workdir, data_cache)
  assert rerun.returncode == 0, rerun.stderr[-5000:]
  assert rerun.stderr.count("already finished") == 4  # every stage skipped, nothing retrained
  assert read_metrics(workdir / "dpo") == dpo

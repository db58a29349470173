"""--dry_run: the train step compiled on abstract inputs, its per-device memory and FLOP plan."""

import os
import subprocess
import sys

import jax
import pytest

from phi4_jax import configs
from phi4_jax.model import flops_per_token
from phi4_jax.train import dry_run, loop
from phi4_jax.train.config import model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"seq_len": 128, "global_batch_size": 8, "loss_chunk": 64}


def test_plan_bytes_match_xla_arguments_and_a_hand_count():
  config = configs.load(os.path.join(ROOT, "experiments/pretrain.py:test"), {**SMALL, "mesh_shape": (1, 8, 1)})
  plan = dry_run.plan(config)
  b = plan["bytes_per_device"]
  # Our per-device shard sizes add up to what XLA counts as the step's arguments (the step
  # counter and optax's count scalars are the only difference).
  assert 0 <= plan["xla_argument_bytes"] - (b["params"] + b["optimizer_state"] + b["batch"]) < 64
  # Hand count: fp32 params split over fsdp=8 (the norm scales are small and may replicate);
  # AdamW's two moments are twice the params; the batch is 5 int32 fields of [8/8, 128].
  params = plan["params"] * 4
  assert params / 8 <= b["params"] < params / 8 + 64 * 4 * 8
  assert abs(b["optimizer_state"] - 2 * b["params"]) < 64
  assert b["batch"] == 5 * 4 * 1 * 128
  assert b["temporaries"] > 0 and b["total"] == sum(v for k, v in b.items() if k != "total")
  cfg = model_config(configs.load(os.path.join(ROOT, "experiments/pretrain.py:test"), SMALL))
  assert plan["flops_per_step_per_device_model"] == flops_per_token(cfg, 128) * 8 * 128 / 8
  assert plan["devices"] == jax.device_count() == 8 and plan["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert all(plan["fits"].values())
  assert dry_run.plan(configs.load(os.path.join(ROOT, "experiments/pretrain.py:test"),
                                   {**SMALL, "mesh_shape": (1, 8, 1)}), device_memory_gb=1e-4)["fits"] == {
                                       "0.0001 GB": False}


@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_flops_count_the_reference_forward_the_step_runs(precompute):
  """A DPO step also runs its frozen reference forward (2N per token of 6N), unless its log-probs
  were precomputed (issue #24, item 12: the plan left it out)."""
  overrides = {**SMALL, "mesh_shape": (1, 8, 1), "dpo.precompute_reference": precompute, "init_from": "/w/sft"}
  config = configs.load(os.path.join(ROOT, "experiments/dpo.py:test"), overrides)
  plan = dry_run.plan(config)
  per_token = flops_per_token(model_config(config), 128) * 8 * 128 / 8
  assert plan["frozen_forwards"] == (0 if precompute else 1)
  assert plan["flops_per_step_per_device_model"] == pytest.approx(per_token * (1 if precompute else 4 / 3))
  assert ("frozen forward" in dry_run.describe(plan)) is not precompute


def test_dry_run_command_plans_every_training_stage_of_a_recipe_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(
      [sys.executable, "-m", "phi4_jax.main", f"--config={ROOT}/experiments/recipe.py:test",
       f"--workdir={workdir}", "--dry_run", "--devices=4"], env=env, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  planned = [line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("dry run")]
  assert planned == [f"dry run of stage {s}" for s in ("pretrain", "midtrain", "sft", "dpo_pts")]
  assert "4 cpu devices (mesh data=1 x fsdp=4 x tensor=1)" in out.stdout
  assert "DPO reference" in out.stdout  # (dpo_pts scores a frozen reference each step)
  assert "XLA temporaries" in out.stdout and "H100 (80 GB) yes" in out.stdout
  assert not workdir.exists()
  bad = subprocess.run(
      [sys.executable, "-m", "phi4_jax.main", f"--config={ROOT}/experiments/pretrain.py:test",
       "--dry_run", "--devices=3"], env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "error: config.global_batch_size" in bad.stderr


@pytest.mark.parametrize("stage", ["midtrain", "dpo"])
def test_the_dry_run_lowers_the_step_the_loop_runs(tmp_path, monkeypatch, stage):
  # midtrain: long_half_row, long_full_row and `replay`, a mixture of the 5 Table-5 sources (7);
  # dpo: pair rows and the frozen reference (init_from's params) as the step's extra input.
  overrides = {**SMALL, "mesh_shape": (1, 8, 1), "steps": 1, "tensorboard": False}
  if stage == "dpo":
    pretrain = configs.load(os.path.join(ROOT, "experiments/pretrain.py:test"), overrides)
    loop.train(pretrain, str(tmp_path / "pre"))
    overrides["init_from"] = str(tmp_path / "pre")
  config = configs.load(os.path.join(ROOT, f"experiments/{stage}.py:test"), overrides)
  lowered = []  # the StableHLO of each train step lowered: the dry run's, then the loop's
  jit_step = loop.jit_step

  class Spy:
    def __init__(self, *args):
      self.jitted = jit_step(*args)

    def lower(self, *args):
      out = self.jitted.lower(*args)
      lowered.append(out.as_text())
      return out

  monkeypatch.setattr(loop, "jit_step", Spy)
  dry_run.plan(config)
  run = loop.prepare(config, str(tmp_path / "w"))
  try:
    batch = loop.batch_placer(run)(next(run.data_iter))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), batch)
    loop.compile_step(run).lower(run.abstract_state, abstract, run.extras)
  finally:
    run.mngr.close()
  sources = {"midtrain": 2 + 5, "dpo": 1}[stage]
  assert len(run.data_iter.source_names) == sources == run.objective.loss_fn.keywords["num_sources"]
  assert len(lowered) == 2 and lowered[0] == lowered[1]  # same sources, same batch fields and shapes

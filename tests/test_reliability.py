"""Bad input named before it costs compute, and recovery from a divergence or a bad checkpoint."""

import json
import os

import numpy as np
import pytest

from phi4_jax import configs
from phi4_jax import data as data_lib
from phi4_jax.store import checkpoint
from phi4_jax.train import loop, recovery
from phi4_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"seq_len": 64, "global_batch_size": 4, "mesh_shape": (1, 4, 2), "log_every": 1,
        "loss_chunk": 64, "tensorboard": False, "async_checkpointing": False}


def _config(**overrides):
  return configs.load(os.path.join(ROOT, "experiments/pretrain.py:test"), {**FAST, **overrides})


@pytest.mark.parametrize("overrides,message", [
    ({"optimizer.peak_lr": -1e-3}, r"config.optimizer.peak_lr: must be >= 0, got -0.001"),
    ({"optimizer.warmup_steps": -5}, r"config.optimizer.warmup_steps: must be >= 0, got -5"),
    ({"optimizer.b1": -0.1}, r"config.optimizer.b1: must be in \[0, 1\), got -0.1"),
    ({"optimizer.b2": 1.0}, r"config.optimizer.b2: must be in \[0, 1\), got 1.0"),
    ({"optimizer.eps": 0.0}, r"config.optimizer.eps: must be > 0, got 0.0"),
    ({"optimizer.end_lr_ratio": 1.5}, r"config.optimizer.end_lr_ratio: must be in \[0, 1\]"),
    ({"optimizer.weight_decay": -0.1}, r"config.optimizer.weight_decay: must be >= 0"),
    ({"optimizer.peak_lr": float("inf")}, r"config.optimizer.peak_lr: must be finite and >= 0, got inf"),
    ({"optimizer.grad_clip_norm": -1.0}, r"config.optimizer.grad_clip_norm: must be >= 0"),
    ({"keep_checkpoints": -1}, r"config.keep_checkpoints: must be >= 0, got -1"),
    ({"keep_period": -2}, r"config.keep_period: must be >= 0"),
    ({"log_every": 0}, r"config.log_every: must be >= 1, got 0"),
    ({"steps": 0}, r"config.steps: must be >= 1"),
    ({"init_step": -2}, r"config.init_step: must be >= -1"),
    ({"min_free_disk_gb": -1.0}, r"config.min_free_disk_gb: must be >= 0"),
    ({"spike_factor": 0.5}, r"config.spike_factor: must be > 1 \(or 0\), got 0.5"),
    ({"skip_batches": 3}, r"config.skip_batches: is 3, but config.resume_step names no step"),
    ({"mesh_shape": (1, 8)}, r"config.mesh_shape: must be a tuple of 3 integers"),
    ({"data.epoch_margin": -1.0}, r"config.data.epoch_margin: must be >= 0"),
    ({"model.vocab_size": 512}, r"config.model.vocab_size: 512 is smaller than the tokenizer's"),
])
def test_every_range_is_checked_before_anything_is_written(tmp_path, overrides, message):
  workdir = tmp_path / "w"
  with pytest.raises(ValueError, match=message):
    loop.train(_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_unknown_field_says_which_and_suggests(tmp_path):
  config = _config()
  config.stepz = 3
  with pytest.raises(ValueError, match=r"^unknown field config.stepz \(did you mean steps"):
    loop.train(config, str(tmp_path / "w"))
  config = _config()
  config.optimizer.peak_lrr = 1.0
  with pytest.raises(ValueError, match=r"unknown field config.optimizer.peak_lrr \(did you mean peak_lr\?\)"):
    loop.train(config, str(tmp_path / "w"))


def test_init_from_without_a_real_checkpoint_is_named_and_writes_nothing(tmp_path):
  bogus = tmp_path / "bogus"
  (bogus / "checkpoints" / "5").mkdir(parents=True)
  (bogus / "checkpoints" / "5" / "junk").write_text("not a checkpoint")
  workdir = tmp_path / "w"
  with pytest.raises(ValueError, match=r"config.init_from: .*bogus/checkpoints/5 holds no readable params"):
    loop.train(_config(steps=1, init_from=str(bogus)), str(workdir))
  assert not workdir.exists()


def test_keep_period_keeps_sparse_older_checkpoints(tmp_path):
  workdir = str(tmp_path / "w")
  loop.train(_config(steps=12, checkpoint_every=2, keep_checkpoints=1, keep_period=4), workdir)
  assert checkpoint.all_steps(workdir) == [4, 8, 12]


def test_a_corrupted_latest_checkpoint_names_its_step_and_resume_step_goes_around_it(tmp_path):
  workdir = str(tmp_path / "w")
  loop.train(_config(steps=4, checkpoint_every=2), workdir)
  state_file = os.path.join(workdir, "checkpoints", "4", "data", "process_0-of-1.json")
  with open(state_file, "w") as f:
    f.write('{"truncated')
  with pytest.raises(recovery.CheckpointError,
                     match=r"checkpoints/4 cannot be restored \(.*\); rerun with --config.resume_step=2"):
    loop.train(_config(steps=6, checkpoint_every=2), workdir)
  summary = loop.train(_config(steps=6, checkpoint_every=2, resume_step=2), workdir)
  assert (summary["start_step"], summary["step"]) == (2, 6)
  assert os.listdir(os.path.join(workdir, "checkpoints_after_2")) == ["4"]  # set aside, not deleted
  assert checkpoint.all_steps(workdir) == [2, 4, 6]  # the new 4 and 6, trained from 2


def test_divergence_is_recovered_with_resume_step_and_skip_batches(tmp_path):
  workdir = str(tmp_path / "w")
  # A warmup to an absurd LR diverges within a few steps; every step is checkpointed, 3 kept.
  wild = dict(checkpoint_every=1, keep_checkpoints=3, **{
      "optimizer.peak_lr": 300.0, "optimizer.warmup_steps": 30, "optimizer.grad_clip_norm": 0.0})
  with pytest.raises(recovery.NonFiniteLossError) as err:
    loop.train(_config(steps=30, **wild), workdir)
  message = str(err.value)
  bad = int(message.split(" at step ")[1].split()[0])
  kept = checkpoint.all_steps(workdir)
  assert max(kept) == bad - 1 and len(kept) == 3  # nothing diverged was saved
  resume, skip = kept[-2], bad - kept[-2]
  assert f"--config.resume_step={resume} --config.skip_batches={skip}" in message

  calm = dict(wild, **{"optimizer.peak_lr": 1e-4})
  loop.train(_config(steps=bad + 3, resume_step=resume, skip_batches=skip, **calm), workdir)
  rows = {r["step"]: r["loss"] for r in read_metrics(workdir)}
  assert all(np.isfinite(rows[s]) for s in range(resume + 1, bad + 4))
  assert os.listdir(os.path.join(workdir, f"checkpoints_after_{resume}")) == [str(bad - 1)]

  (record,) = [json.loads(line) for line in open(os.path.join(workdir, "recovery.jsonl"))]
  assert record["skipped_data_of_steps"] == [resume + 1, resume + skip]
  fresh = data_lib.make_train_iterator(_config(steps=30), 0, 1)  # the batches a straight run reads
  for _ in range(resume):
    next(fresh)
  assert record["data_before"] == json.loads(json.dumps(fresh.progress(), default=float))
  for _ in range(skip):
    next(fresh)
  assert record["data_after"] == json.loads(json.dumps(fresh.progress(), default=float))

  # The same command again resumes from its own newest step: nothing is set aside or skipped twice.
  summary = loop.train(_config(steps=bad + 5, resume_step=resume, skip_batches=skip, **calm), workdir)
  assert summary["start_step"] == bad + 3
  assert not os.path.exists(os.path.join(workdir, f"checkpoints_after_{resume}_1"))
  assert len(open(os.path.join(workdir, "recovery.jsonl")).readlines()) == 1


def test_a_loss_spike_stops_the_run_with_spike_factor():
  losses = iter([2.0] * 20 + [2.1, 9.0])
  recent = recovery.new_window()
  seen = []

  def fail(kind, what):
    raise kind(what)

  with pytest.raises(recovery.LossSpikeError, match=r"loss spike: 9 is over spike_factor=3.0 x the mean"):
    for step, loss in enumerate(losses, 1):
      recovery.check_step(loss, 1.0, step, recent, 3.0, fail)
      seen.append(step)
  assert seen[-1] == 21  # 2.1 passes, 9.0 (over 3 x ~2) stops
  with pytest.raises(recovery.NonFiniteLossError):
    recovery.check_step(float("nan"), 1.0, 1, recovery.new_window(), 0.0, fail)


def test_suggestion_steps_back_past_the_last_good_checkpoint():
  assert recovery.suggestion([10, 20, 30], 35) == (20, 15)
  assert recovery.suggestion([30], 35) == (30, 5)
  assert recovery.suggestion([], 3) is None

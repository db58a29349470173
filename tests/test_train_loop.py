"""The training loop end to end: exact resume after kill -9, resharding, stage hand-off, guards."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from phi4_jax import configs
from phi4_jax.store import checkpoint, workdir
from phi4_jax.train import loop, recovery
from phi4_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small and fast: the test model preset, short rows, a tiny batch.
FAST = {"seq_len": 128, "global_batch_size": 4, "log_every": 1, "optimizer.warmup_steps": 2,
        "loss_chunk": 64, "tensorboard": False}


def _config(stage="pretrain", **overrides):
  """In this process: 8 fake devices as fsdp=4 x tensor=2."""
  overrides = {**FAST, "mesh_shape": (1, 4, 2), **overrides}
  return configs.load(os.path.join(ROOT, f"experiments/{stage}.py:test"), overrides)


def _cli(workdir, devices, **overrides):
  args = [f"--config.{k}={v}" for k, v in {**FAST, **overrides}.items()]
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  cmd = [sys.executable, "-m", "phi4_jax.main", f"--config={ROOT}/experiments/pretrain.py:test",
         f"--workdir={workdir}", *args]
  return cmd, env


def _logged_steps(workdir):
  """Every step of W/metrics.jsonl in file order, repeats included (read_metrics drops them)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f if line.strip()]


def _losses(workdir, steps):
  rows = {r["step"]: r["loss"] for r in read_metrics(workdir)}
  return [rows[s] for s in steps]


def test_kill_9_after_checkpoint_resumes_exactly(tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  run = dict(steps=12, checkpoint_every=6, async_checkpointing=False)
  cmd, env = _cli(straight, 1, **run)
  subprocess.run(cmd, env=env, check=True, capture_output=True)

  cmd, env = _cli(killed, 1, **run)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  marker = os.path.join(killed, "checkpoints", "6", "commit_success.txt")
  deadline = time.monotonic() + 300
  while not os.path.exists(marker) and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(marker), "the run never wrote its step-6 checkpoint"
  assert checkpoint.latest_step(killed) < 12, "killed too late to test a resume"
  resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert _losses(killed, range(7, 13)) == _losses(straight, range(7, 13))
  # A restart from scratch would give the same losses; the log shows the rerun began at step 7.
  # Every step is logged once (the killed run's rows after step 6 were dropped, not kept beside the
  # rerun's; a restart from scratch would log 1-6 twice), and each run's first row times no step:
  # its only step began with a compile and a restore (tokens/s there read 255,691 on a ~700 machine).
  assert _logged_steps(killed) == list(range(1, 13))
  rows = read_metrics(killed)
  assert [r["step"] for r in rows if "compile_s" in r] == [1, 7]
  assert all(r["tokens_per_s"] is None and r["mfu"] is None for r in rows if "compile_s" in r)
  assert all(r["tokens_per_s"] > 0 for r in rows if "compile_s" not in r)


def test_checkpoint_from_8_devices_restores_on_4(tmp_path):
  workdir = str(tmp_path / "w")
  summary = loop.train(_config(steps=4, checkpoint_every=2), workdir)
  assert summary["step"] == 4 and jax.device_count() == 8
  cmd, env = _cli(workdir, 4, steps=6, checkpoint_every=2, mesh_shape="(1,2,2)")
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in rows)


def test_midtrain_starts_from_pretrain_params_with_fresh_optimizer(tmp_path):
  pre, mid = str(tmp_path / "pretrain"), str(tmp_path / "midtrain")
  loop.train(_config(steps=3), pre)
  # peak_lr 0 leaves params untouched, so the midtrain checkpoint holds exactly what it loaded.
  mid_config = _config("midtrain", steps=1, seq_len=256, init_from=pre, **{"optimizer.peak_lr": 0.0})
  assert mid_config.model.rope_theta == 250_000.0
  loop.train(mid_config, mid)
  cfg, pre_params = workdir.restore_params(pre)
  _, mid_params = workdir.restore_params(mid)
  jax.tree.map(np.testing.assert_array_equal, pre_params, mid_params)
  mid_cfg = json.load(open(os.path.join(mid, "model_config.json")))
  assert mid_cfg["rope_theta"] == 250_000.0 and cfg.rope_theta != 250_000.0
  meta = checkpoint.manager(mid).restore(1, args=checkpoint.ocp.args.Composite(
      meta=checkpoint.ocp.args.JsonRestore()))["meta"]
  assert meta["step"] == 1  # the optimizer (and step) restarted at 0 in the new stage


def test_init_from_errors_name_the_workdir_and_parameter(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.init_from: no checkpoint under .*nowhere"):
    loop.train(_config(steps=1, init_from=str(tmp_path / "nowhere")), str(tmp_path / "a"))
  pre = str(tmp_path / "pre")
  loop.train(_config(steps=1), pre)
  with pytest.raises(ValueError, match=r"\['embed'\]\['embedding'\] has shape \(100352, 64\)"):
    loop.train(_config(steps=1, init_from=pre, **{"model.d_model": 32}), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="config.seed: .* trained with seed 0"):  # resuming pre
    loop.train(_config(steps=2, seed=1), pre)


@pytest.mark.parametrize("overrides,field", [
    ({"global_batch_size": 6}, "global_batch_size"),
    ({"seq_len": 4096}, "seq_len"),
    ({"mesh_shape": (3, -1, 1)}, "mesh_shape"),
    ({"microbatches": 3}, "global_batch_size"),
    ({"loss_chunk": 48}, "loss_chunk"),  # does not divide seq_len 128
    ({"init_step": 3}, "init_step"),  # without init_from
])
def test_bad_config_names_the_field(tmp_path, overrides, field):
  with pytest.raises(ValueError, match=f"config.{field}"):
    loop.train(_config(**overrides), str(tmp_path / "w"))


def test_an_objective_its_sources_cannot_feed_is_refused_before_anything_is_written(tmp_path):
  from phi4_jax.posttrain import dpo
  lm_on_pairs = _config("dpo", objective="lm")
  with lm_on_pairs.unlocked():
    del lm_on_pairs.dpo
  with pytest.raises(ValueError, match=r"config.objective: is 'lm', which trains on text or chat records, "
                     r"but config.data.sources.math.format is 'pairs' \(pairs records\)"):
    loop.train(lm_on_pairs, str(tmp_path / "lm"))
  loop.train(_config(steps=1), str(tmp_path / "pre"))  # (a real init_from: every other field is fine)
  dpo_on_text = _config(objective="dpo", init_from=str(tmp_path / "pre"))
  with dpo_on_text.unlocked():
    dpo_on_text.dpo = dpo.dpo_fields()
  with pytest.raises(ValueError, match=r"config.objective: is 'dpo', which trains on pairs records, but "
                     r"config.data.sources.acquired.format is '' \(text records\)"):
    loop.train(dpo_on_text, str(tmp_path / "dpo"))
  assert not (tmp_path / "lm").exists() and not (tmp_path / "dpo").exists()


@pytest.mark.parametrize("stage,overrides,message", [
    ("dpo", {}, "config.init_from: is empty, but a DPO stage needs one"),
    ("dpo", {"objective": "lm"}, "config.objective: is 'lm', which trains on text or chat records"),
    ("pretrain", {"init_from": "/nowhere"}, "config.init_from: no checkpoint under /nowhere"),
    ("pretrain", {"data.sources.web.globs": "/nowhere/*.parquet"},
     "config.data.sources.web.globs: glob '/nowhere/*.parquet' matches no file"),
])
def test_main_names_a_user_error_in_one_line_and_writes_nothing(tmp_path, stage, overrides, message):
  workdir = tmp_path / "w"
  cmd, env = _cli(workdir, 4, **overrides)
  cmd = [f"--config={ROOT}/experiments/{stage}.py:test" if a.startswith("--config=") else a for a in cmd]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), out.stderr[-3000:]
  assert not workdir.exists()


def test_unwritable_workdir_fails_before_training_in_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match="not writable"):
    loop.train(_config(steps=1), str(blocker / "w"))
  cmd, env = _cli(blocker / "w", 4)
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1].startswith(f"error: workdir {blocker / 'w'} is not writable")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "w")
  config = _config(steps=30, checkpoint_every=1, async_checkpointing=False,
                   **{"optimizer.peak_lr": 1e30, "optimizer.warmup_steps": 0,
                      "optimizer.grad_clip_norm": 0.0})
  with pytest.raises(recovery.NonFiniteLossError, match="non-finite loss") as err:
    loop.train(config, workdir)
  bad_step = int(str(err.value).split(" at step ")[1].split()[0])
  assert checkpoint.latest_step(workdir) == bad_step - 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1])
def test_the_preemption_flag_names_the_signal_it_got(signum):
  """A first Ctrl-C is a flag, not a KeyboardInterrupt; SIGUSR1 is SLURM's warning before the time
  limit (launch/slurm.py's --signal); each is logged by its name ("SIGINT: saved step ...")."""
  from phi4_jax.train.preemption import Preemption
  with Preemption() as preemption:
    os.kill(os.getpid(), signum)
    assert preemption.agreed(0) and preemption.signal == signal.Signals(signum).name


def test_sigterm_saves_a_checkpoint_and_the_rerun_finishes(tmp_path):
  workdir = str(tmp_path / "w")
  cmd, env = _cli(workdir, 1, steps=400, checkpoint_every=1000, async_checkpointing=True)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline and len(read_metrics(workdir)) < 3:
    time.sleep(0.05)
  assert os.path.exists(metrics), "the run logged no step before the deadline"
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  saved = checkpoint.latest_step(workdir)
  assert saved is not None and 3 <= saved < 400  # written on SIGTERM, not by checkpoint_every
  assert "SIGTERM: saved step" in stderr
  cmd, env = _cli(workdir, 1, steps=saved + 2, checkpoint_every=1000)
  subprocess.run(cmd, env=env, check=True, capture_output=True)
  assert _logged_steps(workdir) == list(range(1, saved + 3))  # resumed at saved + 1, no step twice


def test_relative_workdir_checkpoints_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # README's command uses --workdir=runs/colab; orbax needs absolute paths
  loop.train(_config(steps=2, checkpoint_every=1, async_checkpointing=False), "runs/w")
  assert checkpoint.latest_step("runs/w") == 2
  summary = loop.train(_config(steps=3, checkpoint_every=1), "runs/w")
  assert (summary["start_step"], summary["step"]) == (2, 3)


@pytest.mark.parametrize("bad", [4, 5])
def test_a_non_finite_loss_read_one_step_late_is_never_saved(tmp_path, bad):
  """Step N's metrics are read after step N + 1 is dispatched. A non-finite loss at a checkpoint
  step (4) or at the step before one (5, read after 6 is dispatched) still stops the run before a
  state past N - 1 is saved, and the last good checkpoint holds the data state of its own step
  (not of the batches read ahead)."""
  workdir_ = str(tmp_path / "w")
  run = loop.prepare(_config(steps=8, checkpoint_every=2, async_checkpointing=False), workdir_)
  compiled, dispatched = loop.compile_step(run), []

  def step_fn(state, batch, extras):
    state, m = compiled(state, batch, extras)
    dispatched.append(len(dispatched) + 1)
    return state, ({**m, "loss": m["loss"] * np.nan} if dispatched[-1] == bad else m)

  try:
    with pytest.raises(recovery.NonFiniteLossError, match=f"at step {bad} .*nothing past step {bad - 1}"):
      loop.run_steps(run, loop.build_or_restore_state(run), step_fn)
  finally:
    loop._close(run, raising=False)
  assert dispatched[-1] == (4 if bad == 4 else 6)  # 5's loss was read after 6 was dispatched
  kept = checkpoint.all_steps(workdir_)
  assert kept == list(range(2, bad, 2))
  data_state = os.path.join(workdir_, "checkpoints", str(kept[-1]), "data", "process_0-of-1.json")
  assert json.load(open(data_state))["batches"] == kept[-1]
  assert [r["step"] for r in read_metrics(workdir_)] == list(range(1, bad))


def test_prefetch_gives_the_batches_in_order_with_the_state_of_each_and_raises_the_readers_error():
  from phi4_jax.train.prefetch import Prefetch

  class Source:
    def __init__(self, fail_at=None):
      self.i, self.fail_at = 0, fail_at

    def __next__(self):
      if self.i == self.fail_at:
        raise ValueError(f"bad.jsonl:{self.i}: unreadable")
      if self.i == 5:
        raise StopIteration
      self.i += 1
      return {"x": self.i}

    def get_state(self):
      return {"i": self.i}

  for depth in (0, 3):
    with Prefetch(Source(), lambda local: local["x"] * 10, depth) as batches:
      assert batches.get_state() == {"i": 0}
      taken = []
      for batch in batches:
        taken.append((batch, batches.get_state()))
      assert taken == [(10 * i, {"i": i}) for i in range(1, 6)]
      assert next(batches, None) is None  # the end is seen again
    with Prefetch(Source(fail_at=2), lambda local: local["x"], depth) as batches:
      assert [next(batches), next(batches)] == [1, 2]
      with pytest.raises(ValueError, match="bad.jsonl:2: unreadable"):
        next(batches)
      assert batches.get_state() == {"i": 2}

"""Checkpoints written before the house-keeping change still resume; a full disk is named and lost
nothing. Both run `python -m phi4_jax.main` as a user would."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from phi4_jax.store import checkpoint
from phi4_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_COMMIT = "4039e28"  # the last commit before train/workdir.py, hf/, inference/ and data/planner.py
FLAGS = ["--config.seq_len=64", "--config.global_batch_size=2", "--config.log_every=1",
         "--config.tensorboard=false", "--config.loss_chunk=64", "--config.checkpoint_every=2"]


def _main(code_root, workdir, *flags, devices=1):
  # cwd=code_root puts that tree first on sys.path (ahead of the editable install's finder).
  env = {**os.environ, "PYTHONPATH": code_root, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  cmd = [sys.executable, "-m", "phi4_jax.main", f"--config={code_root}/experiments/pretrain.py:test",
         f"--workdir={workdir}", *FLAGS, *flags]
  return subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True, timeout=900)


def _old_tree(tmp_path) -> str:
  old = tmp_path / "old"
  old.mkdir()
  try:
    archive = subprocess.run(["git", "-C", ROOT, "archive", OLD_COMMIT], capture_output=True, check=True)
  except (OSError, subprocess.CalledProcessError) as e:
    pytest.skip(f"commit {OLD_COMMIT} is not in this clone's history: {e}")
  subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
  return str(old)


def _old_corpus(old_code: str, cache: str) -> list[str]:
  """Flags reading the old code's embedded corpus files (the corpus changed since: both codes must
  train on the same documents for the losses to compare)."""
  built = subprocess.run([sys.executable, "-c", f"from phi4_jax.data import corpus; print(corpus.build({cache!r}))"],
                         cwd=old_code, env={**os.environ, "PYTHONPATH": old_code}, capture_output=True, text=True,
                         check=True).stdout.strip()
  return [f"--config.data.sources.{name}.globs={built}/{name}.jsonl"
          for name in ("acquired", "code", "synthetic", "web", "web_rewrites")]


def test_a_checkpoint_of_the_previous_layout_resumes_exactly(tmp_path, data_cache):
  os.environ["PHI4_JAX_CACHE"] = data_cache
  old_code = _old_tree(tmp_path)
  data = _old_corpus(old_code, data_cache)
  resumed, straight = tmp_path / "resumed", tmp_path / "straight"
  out = _main(old_code, resumed, "--config.steps=4", *data)  # (the same steps: the LR schedule depends on it)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resume_step" not in json.loads((resumed / "config.json").read_text())  # the old code ran
  shutil.rmtree(resumed / "checkpoints" / "4")  # as if it had stopped after its step-2 checkpoint
  assert checkpoint.latest_step(resumed) == 2
  out = _main(ROOT, resumed, "--config.steps=4", *data)
  assert out.returncode == 0, out.stderr[-3000:]
  assert _main(ROOT, straight, "--config.steps=4", *data).returncode == 0
  losses = lambda w: {r["step"]: r["loss"] for r in read_metrics(w)}
  assert losses(resumed) == losses(straight)  # model, optimizer state and data position all carried


@pytest.fixture
def small_disk(tmp_path):
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (needs root): no small disk to fill")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_during_a_save_names_the_step_and_keeps_the_rest(small_disk, data_cache):
  os.environ["PHI4_JAX_CACHE"] = data_cache
  workdir = small_disk / "w"
  # d_model 8: a ~19 MB state, so the start-up space check passes and the disk fills at a later save.
  run = ("--config.model.d_model=8", "--config.keep_checkpoints=0", "--config.checkpoint_every=1")
  out = _main(ROOT, workdir, "--config.steps=30", *run)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: writing {workdir}/checkpoints/") and "No space left on device" in last
  kept = checkpoint.all_steps(workdir)
  assert kept == list(range(1, len(kept) + 1)) and len(kept) >= 2  # every earlier step intact
  subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
  out = _main(ROOT, workdir, f"--config.steps={kept[-1] + 2}", *run)
  assert out.returncode == 0, out.stderr[-3000:]
  assert checkpoint.latest_step(workdir) == kept[-1] + 2
  assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]  # the partial save is gone

"""Two runs on one workdir (issue #24, item 6): the second is refused naming the holder, a killed
run's lock is taken over, and the free-space check after a full disk counts the checkpoints already
kept."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from phi4_jax.store import workdir
from phi4_jax.store.workdir import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_runs_lock_is_taken_over(tmp_path):
  w = str(tmp_path / "w")
  os.makedirs(w)
  with workdir.locked(w, 0, 2) as lock:
    with pytest.raises(WorkdirError, match=rf"in use by another run: {socket.gethostname()} pid {os.getpid()} "
                                           r"\(process 0 of 2, since .*remove .*\.lock\.process_0"):
      with workdir.locked(w, 0, 1):
        pass
    with workdir.locked(w, 1, 2):  # (another process of the same job holds its own)
      pass
  assert not os.path.exists(lock)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  with open(lock, "w") as f:  # a run on this host, killed with its lock in place
    json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "process_index": 0}, f)
  with workdir.locked(w, 0, 1) as again:
    assert json.load(open(again))["pid"] == os.getpid()
  with open(lock, "w") as f:  # another host's: alive while its heartbeat goes on
    json.dump({"host": "elsewhere", "pid": 1, "process_index": 0}, f)
  with pytest.raises(WorkdirError, match="elsewhere pid 1"):
    with workdir.locked(w, 0, 1):
      pass
  old = time.time() - workdir.LOCK_STALE_S - 60
  os.utime(lock, (old, old))
  with workdir.locked(w, 0, 1):  # its heartbeat stopped: the run is dead
    pass


def test_a_requeued_cluster_job_takes_over_its_own_lock(tmp_path, monkeypatch):
  """A SLURM requeue or a JobSet restart may land on another host at once (its old run killed with
  no time to remove the lock): the same job id marks it as the same job."""
  w = str(tmp_path / "w")
  os.makedirs(w)
  lock = os.path.join(w, ".lock.process_0")
  with open(lock, "w") as f:  # a fresh heartbeat, on another host, of job 4242
    json.dump({"host": "node-7", "pid": 1, "process_index": 0, "job": "4242"}, f)
  monkeypatch.setenv("SLURM_JOB_ID", "4243")
  with pytest.raises(WorkdirError, match="node-7 pid 1"):
    with workdir.locked(w, 0, 1):
      pass
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  with workdir.locked(w, 0, 1) as held:
    assert json.load(open(held))["job"] == "4242"


def test_main_refuses_a_second_run_on_the_same_workdir_in_one_line(tmp_path):
  w = tmp_path / "w"
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "phi4_jax.main", f"--config={ROOT}/experiments/pretrain.py:test",
         f"--workdir={w}", "--config.steps=2"]
  with workdir.locked(str(w), 0, 1):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert sorted(os.listdir(w)) == [".lock.process_0"]  # the refused run wrote nothing
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1].startswith(f"error: workdir {w} is in use by another run: "
                                                         f"{socket.gethostname()} pid {os.getpid()}")


def test_the_free_space_check_counts_the_checkpoints_already_kept(tmp_path, monkeypatch):
  w = tmp_path / "w"
  state = 1_000_000
  (w / "checkpoints" / "4").mkdir(parents=True)
  (w / "checkpoints" / "4" / "params").write_bytes(b"x" * state)  # the one kept state
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(workdir.shutil, "disk_usage", lambda p: usage._replace(free=int(1.5 * state)))
  workdir.check_writable(str(w), 2 * state)  # keep 1 + 1 in flight: room for one more is enough
  with pytest.raises(WorkdirError, match=r"has 0.00 GiB free"):
    workdir.check_writable(str(w), 3 * state)  # keep 2 + 1: two more states do not fit

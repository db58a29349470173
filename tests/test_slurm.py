"""launch/slurm.py on a real SLURM cluster: `python -m launch.slurm --nodes=2 --submit` trains the
test preset as two processes (one per node, one CPU device each), resumes a finished run, and
saves on `scancel` (SIGTERM) and resumes from that step.

The cluster is .ci/slurm_up.sh's (two slurmds, n1 and n2, on this machine); any SLURM whose default
partition has two idle nodes sharing this filesystem will do. Without one the module is skipped,
unless PHI4_JAX_REQUIRE_SLURM=1, where it fails. Job ids and final states are printed (run with -s).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from launch import local
from phi4_jax.store import checkpoint
from phi4_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("sbatch", "sinfo", "squeue", "scontrol", "scancel")
REQUIRED = os.environ.get("PHI4_JAX_REQUIRE_SLURM") == "1"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE"}
JOB_TIMEOUT_S = 300


def _cluster_problem() -> str:
  """Why no job can run here ('' if two nodes of the default partition are idle)."""
  absent = [t for t in TOOLS if shutil.which(t) is None]
  if absent:
    return f"{', '.join(absent)} not found (no SLURM client; .ci/slurm_up.sh installs and starts one)"
  try:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t %P"], capture_output=True, text=True,
                         timeout=30)
  except subprocess.TimeoutExpired:
    return "sinfo timed out (is slurmctld up? run .ci/slurm_up.sh)"
  if out.returncode:
    return f"sinfo failed ({out.returncode}: {out.stderr.strip()}); run .ci/slurm_up.sh"
  idle = {f[0] for f in (line.split() for line in out.stdout.splitlines())
          if len(f) == 3 and f[1] == "idle" and f[2].endswith("*")}
  if len(idle) < 2:
    return f"need 2 idle nodes in the default partition, sinfo shows {out.stdout.strip()!r}"
  return ""


PROBLEM = _cluster_problem()
if PROBLEM and REQUIRED:
  pytest.fail(f"PHI4_JAX_REQUIRE_SLURM=1 but no SLURM cluster to run on: {PROBLEM}", pytrace=False)
if PROBLEM:
  pytest.skip(f"no SLURM cluster: {PROBLEM}", allow_module_level=True)


@pytest.fixture(scope="module")
def env(data_cache):
  """The submitting environment (sbatch passes it on to every task): one CPU device per process,
  no persistent XLA cache (a cached executable can order its collectives differently from a fresh
  compile in the other process, and gloo then deadlocks), no SLURM_* of an enclosing job."""
  base = {k: v for k, v in os.environ.items()
          if not k.startswith("SLURM_") and k != "JAX_COMPILATION_CACHE_DIR"}
  return {**local.process_env(1, base), "PHI4_JAX_CACHE": data_cache, "PYTHONPATH": REPO}


def _train_args(workdir, steps, data_cache, **overrides):
  config = {"steps": steps, "seq_len": 64, "global_batch_size": 4, "loss_chunk": 64,
            "mesh_shape": "(1, -1, 1)", "log_every": 1, "checkpoint_every": 1000,
            "optimizer.warmup_steps": 1, "tensorboard": "false", "data.shards": 2,
            "data.cache_dir": data_cache, **overrides}
  return ["--config=experiments/pretrain.py:test", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in config.items())]


class Job:
  def __init__(self, job_id, log):
    self.id, self.log = job_id, log

  def text(self):
    return open(self.log).read() if os.path.exists(self.log) else f"(no log {self.log} yet)"

  def info(self):
    """scontrol's fields of the job, e.g. {"JobState": "COMPLETED", "ExitCode": "0:0"}."""
    out = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, f"scontrol show job {self.id}: {out.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

  def wait(self, until=None, timeout_s=JOB_TIMEOUT_S):
    """Polls until the job has ended (or until() holds while it runs); its final scontrol fields."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      info = self.info()
      if info["JobState"] in FINAL:
        print(f"job {self.id}: {info['JobState']} exit {info['ExitCode']} on {info['NodeList']} "
              f"in {info['RunTime']}")
        return info
      if until is not None and info["JobState"] == "RUNNING" and until():
        return info
      time.sleep(0.2)
    subprocess.run(["scancel", self.id], timeout=30)
    pytest.fail(f"job {self.id} still {info['JobState']} after {timeout_s}s:\n{self.text()[-5000:]}")


def _submit(tmp_path, env, name, train_args):
  """`python -m launch.slurm --nodes=2 --gpus_per_node=0 --submit -- ARGS`: the job it submitted."""
  log = str(tmp_path / f"{name}.out")
  cmd = [sys.executable, "-m", "launch.slurm", "--nodes=2", "--gpus_per_node=0",
         f"--job_name={name}", f"--log_file={log}", "--time=00:15:00", "--submit", "--", *train_args]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  found = re.search(r"Submitted batch job (\d+)", out.stdout)
  assert found, out.stdout + out.stderr
  print(f"job {found.group(1)}: {name}")
  return Job(found.group(1), log)


def _completed(job):
  info = job.wait()
  assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job.text()[-5000:]
  return info


def _logged_steps(workdir):
  """Every step of W/metrics.jsonl in file order, repeats included (read_metrics drops them)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f if line.strip()]


def _ran_on_both_nodes(job, info):
  assert info["NumNodes"] == "2", info
  text = job.text()
  for i in range(2):
    assert f"process {i} of 2" in text, text[-5000:]  # phi4_jax.distributed joined both processes


def test_trains_on_two_nodes_and_resumes(tmp_path, env, data_cache):
  workdir, steps = str(tmp_path / "w"), 4
  first = _submit(tmp_path, env, "phi4-first", _train_args(workdir, steps, data_cache))
  info = _completed(first)
  _ran_on_both_nodes(first, info)
  assert _logged_steps(workdir) == list(range(1, steps + 1))
  assert checkpoint.all_steps(workdir) == [steps]

  more = _submit(tmp_path, env, "phi4-more", _train_args(workdir, steps + 3, data_cache))
  _completed(more)
  assert f"resumed {workdir} from step {steps}" in more.text(), more.text()[-5000:]
  assert _logged_steps(workdir) == list(range(1, steps + 4))  # from step 5 on: no step twice
  assert checkpoint.all_steps(workdir)[-1] == steps + 3
  assert [r["step"] for r in read_metrics(workdir)] == list(range(1, steps + 4))


def test_scancel_saves_the_step_and_the_rerun_resumes(tmp_path, env, data_cache):
  workdir = str(tmp_path / "w")
  long = _submit(tmp_path, env, "phi4-long", _train_args(workdir, 400, data_cache))
  info = long.wait(until=lambda: len(read_metrics(workdir)) >= 3)
  assert info["JobState"] == "RUNNING", f"job {long.id} ended early:\n{long.text()[-5000:]}"
  subprocess.run(["scancel", long.id], check=True, timeout=30)  # SIGTERM, SIGKILL after KillWait
  info = long.wait()
  assert info["JobState"] == "CANCELLED", long.text()[-5000:]
  saved = checkpoint.latest_step(workdir)
  assert saved is not None and 3 <= saved < 400, long.text()[-5000:]  # not by checkpoint_every
  assert checkpoint.all_steps(workdir) == [saved]
  assert f"SIGTERM: saved step {saved} of {workdir}" in long.text(), long.text()[-5000:]
  assert _logged_steps(workdir) == list(range(1, saved + 1))

  rerun = _submit(tmp_path, env, "phi4-rerun", _train_args(workdir, saved + 2, data_cache))
  _ran_on_both_nodes(rerun, _completed(rerun))
  assert f"resumed {workdir} from step {saved}" in rerun.text(), rerun.text()[-5000:]
  assert _logged_steps(workdir) == list(range(1, saved + 3))  # resumed at saved + 1, no step twice
  assert checkpoint.all_steps(workdir)[-1] == saved + 2

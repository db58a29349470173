"""launch/local.py: N loopback processes joined by jax.distributed; failures stop the group."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from launch import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Probes sleep far longer than any teardown can take on a loaded machine: a test tells "stopped"
# from "waited for" by a margin of minutes, not by a tight clock.
SLEEP_S = 600
HANG_S = 300

# A program for launch.local: joins the job through phi4_jax.distributed, then sums every global
# device's index with one jitted cross-process reduction, or (--hang) waits in collectives forever.
PROBE = r'''
import argparse, json, time
from phi4_jax import distributed

p = argparse.ArgumentParser()
p.add_argument("--coordinator_address"); p.add_argument("--num_processes", type=int)
p.add_argument("--process_id", type=int); p.add_argument("--hang", action="store_true")
a = p.parse_args()
distributed.initialize(a.coordinator_address, a.num_processes, a.process_id)

import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

mesh = jax.make_mesh((jax.device_count(),), ("d",))
ids = np.array([[d.id] for d in jax.local_devices()], np.float32)
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), ids, (jax.device_count(), 1))
total = float(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x))
pids = multihost_utils.process_allgather(np.array([jax.process_index()]))
print("RESULT " + json.dumps({"process": jax.process_index(), "count": jax.process_count(),
      "devices": jax.device_count(), "local": jax.local_device_count(), "total": total,
      "device_ids": sorted(d.id for d in jax.devices()), "pids": pids.ravel().tolist()}), flush=True)
if a.hang:
  print("READY", flush=True)
  while True:
    multihost_utils.sync_global_devices("hang")
    time.sleep(0.2)
'''


@pytest.fixture()
def probe_module(tmp_path, monkeypatch):
  (tmp_path / "launch_probe.py").write_text(PROBE)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), REPO]))
  return "launch_probe"


def test_process_env_replaces_device_count():
  env = local.process_env(3, {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"})
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=3"
  assert env["JAX_PLATFORMS"] == "cpu"


def test_process_commands_wire_coordinator_count_and_id():
  cmds = local.process_commands(["--workdir=W"], 3, 1234)
  assert [c[-3:] for c in cmds] == [
      ["--coordinator_address=127.0.0.1:1234", "--num_processes=3", f"--process_id={i}"] for i in range(3)]
  assert all(c[1:4] == ["-m", "phi4_jax.main", "--workdir=W"] for c in cmds)


def test_exit_code_maps_signals_like_a_shell():
  assert local.exit_code(3) == 3
  assert local.exit_code(-signal.SIGKILL) == 137


def test_two_processes_reduce_across_processes(probe_module):
  out = io.StringIO()
  t0 = time.monotonic()
  status = local.launch([], num_processes=2, devices_per_process=2, module=probe_module, out=out)
  text = out.getvalue()
  assert status == 0, text
  results = {}
  for line in text.splitlines():
    match = re.match(r"\[(\d)\] RESULT (.*)", line)
    if match:
      results[int(match.group(1))] = json.loads(match.group(2))
  assert sorted(results) == [0, 1], text
  for prefix, r in results.items():
    assert r["process"] == prefix and r["count"] == 2 and r["devices"] == 4 and r["local"] == 2
    assert r["total"] == float(sum(r["device_ids"]))  # one reduction over both processes' devices
    assert r["pids"] == [0, 1]
  print(f"2x2 probe: {time.monotonic() - t0:.1f}s")


def test_killing_one_process_stops_the_other(probe_module):
  cmd = [sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=2",
         f"--module={probe_module}", "--grace_s=3", "--", "--hang"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  pids, ready, lines = {}, set(), []
  try:
    for line in proc.stdout:
      lines.append(line)
      if m := re.match(r"\[launch\] process (\d) pid (\d+)", line):
        pids[int(m.group(1))] = int(m.group(2))
      if m := re.match(r"\[(\d)\] READY", line):
        ready.add(int(m.group(1)))
      if ready == {0, 1}:
        break
    assert ready == {0, 1}, "".join(lines)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    rest, _ = proc.communicate(timeout=HANG_S)
    elapsed = time.monotonic() - t0
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode != 0
  assert "process 1 was killed by SIGKILL; stopping the others" in rest, rest
  with pytest.raises(ProcessLookupError):  # the survivor is gone too
    os.kill(pids[0], 0)
  print(f"launcher exited {proc.returncode} {elapsed:.1f}s after the kill")


def test_failure_exit_status_is_the_failed_process(probe_module, tmp_path):
  (tmp_path / "fail_probe.py").write_text(
      "import sys, time\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\n"
      "if args['--process_id'] == '1':\n  sys.exit(7)\ntime.sleep(%d)\nopen(%r, 'w')\n" % (SLEEP_S, str(tmp_path / "slept")))
  out = io.StringIO()
  t0 = time.monotonic()
  assert local.launch([], 2, 1, module="fail_probe", grace_s=1.0, out=out) == 7
  assert not (tmp_path / "slept").exists()  # the sleeper was stopped, not waited for
  assert time.monotonic() - t0 < SLEEP_S / 2  # a hang bound only (SLEEP_S is 600 s; it takes ~1 s)
  assert "[launch] process 1 exited with status 7; stopping the others" in out.getvalue()


def test_timeout_stops_a_hung_job(tmp_path, probe_module):
  sleeper = f"import time\ntime.sleep({SLEEP_S})\nopen({str(tmp_path / 'slept')!r}, 'w')\n"
  (tmp_path / "sleep_probe.py").write_text(sleeper)
  out = io.StringIO()
  t0 = time.monotonic()
  assert local.launch([], 2, 1, module="sleep_probe", grace_s=0.5, timeout_s=1.0, out=out) == 124
  assert not (tmp_path / "slept").exists()  # stopped at the timeout, not waited for
  assert time.monotonic() - t0 < SLEEP_S / 2  # a hang bound only (SLEEP_S is 600 s; it takes ~2 s)
  assert "[launch] still running after 1s; stopping the processes" in out.getvalue()


def test_processes_die_with_a_killed_launcher(tmp_path, probe_module):
  (tmp_path / "sleep_probe.py").write_text(f"import time\nprint('UP', flush=True)\ntime.sleep({SLEEP_S})\n")
  cmd = [sys.executable, "-m", "launch.local", "--num_processes=2", "--module=sleep_probe"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  pids, up = [], 0
  for line in proc.stdout:
    if m := re.match(r"\[launch\] process \d pid (\d+)", line):
      pids.append(int(m.group(1)))
    up += line.endswith("UP\n")
    if up == 2:
      break
  proc.kill()
  proc.wait()
  deadline = time.monotonic() + 60  # (ends as soon as both are gone)
  while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
    time.sleep(0.05)
  assert len(pids) == 2 and not any(_alive(pid) for pid in pids)


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is dead too
    return f.read().split()[2] != "Z"


def test_cli_rejects_bad_counts(capsys):
  with pytest.raises(SystemExit):
    local.main(["--num_processes=0", "--", "--workdir=W"])
  assert "--num_processes must be >= 1" in capsys.readouterr().err

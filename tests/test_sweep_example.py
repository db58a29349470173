"""The shipped example sweep (experiments/sweeps/synthetic_mix.py:test) end to end via its CLI.

The sweep is killed right after its first point finishes, then rerun: the finished point must not
run again, the other must, and the summary must hold one row per point whose numbers match each
point's own metrics.jsonl and whose data mix matches the fraction swept.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from phi4_jax import sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "experiments/sweeps/synthetic_mix.py:test"


def _sweep_cli(root, env):
  return subprocess.Popen([sys.executable, "-m", "launch.sweep", f"--sweep={SPEC}", f"--workdir={root}",
                           "--devices_per_process=1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture()
def env(data_cache, tmp_path_factory):
  cache = tmp_path_factory.getbasetemp() / "xla_cache"
  return {**os.environ, "PHI4_JAX_CACHE": data_cache, "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def test_example_sweep_is_interrupted_then_resumed(tmp_path, env):
  s = sweeps.load(os.path.join(REPO, SPEC))
  first, second = (p.name for p in s.points)
  assert len(s.points) == 2
  root = tmp_path / "sweep"

  proc = _sweep_cli(root, env)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(f"[sweep] {first}: "):
      break
  os.killpg(proc.pid, signal.SIGKILL)  # the sweep dies as the second point starts
  proc.wait()
  assert lines[-1] == f"[sweep] {first}: done\n", "".join(lines[-40:])
  first_metrics = (root / first / "metrics.jsonl").read_text()

  proc = _sweep_cli(root, env)
  log, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, log[-5000:]
  assert f"[sweep] 1/2 {first}: finished before, skipped" in log
  assert f"[sweep] 2/2 {second}: running in {root / second}" in log
  assert (root / first / "metrics.jsonl").read_text() == first_metrics  # not rerun

  with open(root / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["point"] for r in rows] == [first, second]
  assert (root / "summary.md").read_text().count("\n") == 2 + 2
  for row, point in zip(rows, s.points):
    metrics = [json.loads(line) for line in (root / point.name / "metrics.jsonl").read_text().splitlines()]
    assert row["status"] == "done" and int(row["step"]) == metrics[-1]["step"] == 3
    assert float(row["final_loss"]) == metrics[-1]["loss"]
    assert float(row["loss/web"]) == metrics[-1]["loss_per_source"]["web"]
    fraction = point.labels["synthetic"]
    assert row["synthetic"] == f"{fraction:g}"
    sources = json.loads((root / point.name / "config.json").read_text())["data"]["sources"]
    assert sources["synthetic"]["fraction"] == fraction
    assert sum(src["fraction"] for src in sources.values()) == pytest.approx(1.0, abs=1e-12)
    assert sources["web"]["fraction"] == pytest.approx(0.15 * (1 - fraction) / 0.6)  # Table 5's 0.15
    tokens = {name: src["tokens"] for name, src in metrics[-1]["data"]["sources"].items()}
    assert tokens["synthetic"] / sum(tokens.values()) == pytest.approx(fraction, abs=0.1)

"""The curation pipeline on a two-node Ray cluster (a head and a worker on loopback): both nodes
work, and every output equals the in-process run's byte for byte.

CI starts the cluster (.ci/ray_up.sh) and sets PHI4_JAX_RAY_ADDRESS; without it, this file starts
its own two-node cluster, so the test runs (never skips) wherever Ray is installed.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from test_curate_pipeline import _outputs, corpus  # noqa: F401 (the fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ray() -> str:
  found = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
  assert os.path.exists(found), "no ray command: pip install 'ray[data]' (the test extra has it)"
  return found


@pytest.fixture(scope="module")
def ray_address():
  address = os.environ.get("PHI4_JAX_RAY_ADDRESS")
  if address:
    yield address
    return
  assert not os.environ.get("PHI4_JAX_REQUIRE_RAY"), "PHI4_JAX_REQUIRE_RAY is set but PHI4_JAX_RAY_ADDRESS is not"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "PYTHONPATH": REPO}
  common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
  temp = tempfile.mkdtemp(prefix="p4ray", dir="/tmp")  # (short: Ray's socket paths must fit 107 bytes)
  started = subprocess.run([_ray(), "start", "--head", f"--port={port}", "--include-dashboard=false",
                            f"--temp-dir={temp}", *common], env=env, capture_output=True, text=True)
  assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
  try:
    joined = subprocess.run([_ray(), "start", f"--address=127.0.0.1:{port}", *common], env=env, capture_output=True,
                            text=True)
    assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
    yield f"127.0.0.1:{port}"
  finally:
    subprocess.run([_ray(), "stop", "--force"], env=env, capture_output=True)
    shutil.rmtree(temp, ignore_errors=True)


def test_the_pipeline_on_two_ray_nodes_writes_what_one_process_writes(corpus, tmp_path, ray_address):  # noqa: F811
  flags = [f"--input={corpus / 'in' / '*'}", "--steps=filter,dedup,decontam",
           f"--config.decontam.benchmarks={corpus / 'bench.jsonl'}"]
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  local = subprocess.run([sys.executable, "-m", "phi4_jax.curate", *flags, f"--out={tmp_path / 'local'}"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert local.returncode == 0, local.stderr[-3000:]
  on_ray = subprocess.run([sys.executable, "-m", "phi4_jax.curate", *flags, f"--out={tmp_path / 'ray'}",
                           f"--ray_address={ray_address}"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert on_ray.returncode == 0, on_ray.stderr[-3000:]
  nodes = json.loads((tmp_path / "ray" / "work" / "ray_nodes.json").read_text())
  assert len(nodes) == 2, nodes  # both the head and the worker measured or wrote files
  assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
  assert (tmp_path / "ray" / "summary.json").read_bytes() == (tmp_path / "local" / "summary.json").read_bytes()

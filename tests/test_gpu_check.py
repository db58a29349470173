"""benchmarks/gpu_check.sh --cpu: the GPU check's three steps (tests, training, one JSON line) on CPU."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_mode_runs_the_path_tests_and_prints_steady_state_figures():
  # One of its path tests (all of them run in this suite on their own).
  env = {**os.environ, "PYTHON": sys.executable,
         "GPU_CHECK_TESTS": "tests/test_gpu_paths.py::test_bf16_train_step_tracks_the_fp32_step"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(["bash", os.path.join(ROOT, "benchmarks/gpu_check.sh"), "--cpu"], env=env,
                       capture_output=True, text=True, timeout=600, cwd="/")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "1 passed" in out.stderr and " failed" not in out.stderr
  (line,) = out.stdout.splitlines()
  result = json.loads(line)
  assert (result["backend"], result["steps"], result["seq_len"], result["global_batch_size"]) == ("cpu", 6, 64, 4)
  assert result["tokens_per_s"] > 0 and result["compile_s"] > 0
  assert math.isclose(result["step_time_s"], 4 * 64 / result["tokens_per_s"])
  assert result["peak_memory_of"] == "host process" and result["peak_memory_bytes"] > 100e6
  assert result["mfu"] is None and math.isfinite(result["final_loss"])  # (no peak FLOP/s for a CPU)
  bad = subprocess.run(["bash", os.path.join(ROOT, "benchmarks/gpu_check.sh"), "--gpu"],
                       capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "usage:" in bad.stderr

#!/usr/bin/env python
"""Steady-state training figures of one stage, as ONE JSON line: benchmarks/gpu_check.sh's last step.

Runs the stage in a temporary workdir through the real loop (python -m phi4_jax.main's path), then
reads its metric rows: tokens/s, MFU and step time are medians over the rows after the first (the
first row holds the compile, which is left out of tokens/s and reported as compile_s). Peak memory
is the device's peak_bytes_in_use where the backend reports it (GPU, TPU), else the process's peak
resident memory (CPU).

  python benchmarks/gpu_check.py --config=experiments/pretrain.py:1b --config.steps=30 ...
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv):
  config_arg = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  overrides = dict(a[len("--config."):].split("=", 1) for a in argv if a.startswith("--config."))
  import jax
  from phi4_jax import configs
  from phi4_jax.train import loop
  from phi4_jax.train.metrics import median_tokens_per_s, read_metrics

  config = configs.load(config_arg, overrides)
  with tempfile.TemporaryDirectory() as workdir:
    loop.train(config, workdir)
    rows = read_metrics(workdir)
  steady = [r for r in rows if "compile_s" not in r] or rows
  tokens_per_s = median_tokens_per_s(rows)
  mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  result = {
      "check": "gpu_check", "config": os.path.relpath(config_arg, ROOT), "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "steps": config.steps,
      "seq_len": config.seq_len, "global_batch_size": config.global_batch_size,
      "dtype": config.model.dtype, "tokens_per_s": tokens_per_s,
      "step_time_s": config.global_batch_size * config.seq_len / tokens_per_s,
      "mfu": statistics.median(mfus) if mfus else None, "compile_s": rows[0].get("compile_s"),
      "peak_memory_bytes": peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "peak_memory_of": "device" if peak is not None else "host process",
      "final_loss": rows[-1]["loss"],
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main(sys.argv[1:])

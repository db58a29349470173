#!/usr/bin/env python
"""The --dry_run plan's temporaries (activations, gradients) against a real step's memory on CPU.

The stage (default: the colab pretraining preset, one CPU device) is planned by
phi4_jax.train.dry_run.plan: XLA's temp_size_in_bytes of the compiled train step. Then the same
step really runs: the state and a batch are placed, the step is compiled, and while one step
executes a thread samples the process's resident memory every millisecond. The step's own memory
is the peak during the step minus the resident memory just before it (the state, the batch and
the compiled code are already there; the donated state's outputs reuse its buffers).

  ratio = measured step memory / planned temporaries          (target: within 0.75 - 1.25)

Prints ONE JSON object to stdout.

  python benchmarks/memory_plan_check.py          # colab preset (~1 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

from bench_common import cpu_model, loadavg, log, prepared_run  # (benchmarks/bench_common.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * PAGE


class PeakSampler(threading.Thread):
  def __init__(self):
    super().__init__(daemon=True)
    self.peak, self.done = 0, threading.Event()

  def run(self):
    while not self.done.is_set():
      self.peak = max(self.peak, resident_bytes())
      time.sleep(0.001)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=os.path.join(ROOT, "experiments/pretrain.py:colab"))
  p.add_argument("--steps", type=int, default=3, help="measured steps (median)")
  args = p.parse_args(argv)
  import jax
  from phi4_jax import configs
  from phi4_jax.train import dry_run

  config = configs.load(args.config, {"tensorboard": False})
  planned = dry_run.plan(config)["bytes_per_device"]["temporaries"]
  log(f"planned temporaries {planned / 1e9:.3f} GB")
  measured = []
  with prepared_run(config) as (run, state, step_fn, batch):
    state, m = step_fn(state, batch, run.extras)  # compile, and a first step
    jax.block_until_ready((state, m))
    for _ in range(args.steps):
      before = resident_bytes()
      sampler = PeakSampler()
      sampler.start()
      state, m = step_fn(state, batch, run.extras)
      jax.block_until_ready((state, m))
      sampler.done.set()
      sampler.join()
      measured.append(max(sampler.peak, resident_bytes()) - before)
      log(f"step memory {measured[-1] / 1e9:.3f} GB")
  result = {"benchmark": "memory_plan_check", "config": os.path.relpath(args.config, ROOT),
            "planned_temporaries_bytes": planned, "measured_step_bytes": statistics.median(measured),
            "measured_all": measured, "ratio": statistics.median(measured) / planned,
            "cpu": cpu_model(), "loadavg": loadavg()}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()

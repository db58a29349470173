#!/usr/bin/env python
"""Loop overhead: the training loop's wall time per step against its jitted step alone.

The stage (default: the colab pretraining preset) is prepared as `python -m phi4_jax.main` would
prepare it. First its jitted train step runs alone, back to back on one batch already on the
devices: that is the step's own time. Then the real loop (train/loop.py's run_steps) runs the same
step on the stage's data, with the data iterator slowed to take --data_fraction of that step time
per batch (a slow file system or tokenizer), with metric rows every step, async checkpoints every
--checkpoint_every steps and the progress bar. The loop's time per step is the median interval
between consecutive step dispatches (the first --skip dispatches, which compile, are left out).

  overhead = loop seconds per step / step seconds alone - 1

A loop that waits for each step's metrics and then reads the next batch adds the iterator's whole
time (here: --data_fraction); one that reads ahead and reads metrics a step late adds little.
`overhead_mean` uses the mean interval instead, which includes the checkpoint saves' cost
(`save_interval_s`: the median interval that holds a save; the host waits for that step there).

Prints ONE JSON object to stdout; progress goes to stderr.

  python benchmarks/loop_overhead.py            # colab preset, 1 device (~2 min on 2 cores)
  python benchmarks/loop_overhead.py --quick    # the test preset at seq 64, a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from bench_common import cpu_model, loadavg, log, prepared_run  # (benchmarks/bench_common.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=os.path.join(ROOT, "experiments/pretrain.py:colab"))
  p.add_argument("--steps", type=int, default=32, help="steps of the loop run")
  p.add_argument("--skip", type=int, default=3, help="first dispatch intervals left out")
  p.add_argument("--alone_steps", type=int, default=8, help="steps per timing of the step alone")
  p.add_argument("--repeats", type=int, default=3, help="timings of the step alone (median)")
  p.add_argument("--data_fraction", type=float, default=0.5,
                 help="seconds the data iterator takes per batch, as a fraction of the step alone")
  p.add_argument("--checkpoint_every", type=int, default=8)
  p.add_argument("--quick", action="store_true", help="the test preset at seq 64, 12 steps")
  args = p.parse_args(argv)
  if args.quick:
    args.config = os.path.join(ROOT, "experiments/pretrain.py:test")
    args.steps, args.alone_steps, args.repeats, args.checkpoint_every = 12, 4, 2, 4
  return args


def slowed(inner, delay: float):
  """The data iterator with every batch delayed by `delay` seconds (a grain DatasetIterator, as
  the checkpoint's data handler needs)."""
  import grain

  class Slowed(grain.DatasetIterator):
    def __next__(self):
      time.sleep(delay)
      return next(inner)

    def get_state(self):
      return inner.get_state()

    def set_state(self, state):
      inner.set_state(state)

    def __getattr__(self, name):  # progress, source_names
      return getattr(inner, name)

  return Slowed()


class Clocked:
  """A step function that records the time of each call (its dispatch)."""

  def __init__(self, fn):
    self.fn, self.times = fn, []

  def __call__(self, *args):
    self.times.append(time.monotonic())
    return self.fn(*args)


def main(argv=None):
  args = parse_args(argv)
  import jax
  import jax.numpy as jnp
  from phi4_jax import configs
  from phi4_jax.train import loop

  overrides = {"steps": args.steps, "log_every": 1, "checkpoint_every": args.checkpoint_every,
               "async_checkpointing": True, "tensorboard": False}
  if args.quick:
    overrides.update(seq_len=64, global_batch_size=4, loss_chunk=64)
  config = configs.load(args.config, overrides)
  with prepared_run(config) as (run, state, step_fn, batch):
    scratch = jax.tree.map(jnp.copy, state)  # (the step donates its state)
    log("compiling and timing the step alone")
    scratch, m = step_fn(scratch, batch, run.extras)
    jax.block_until_ready(m)
    alone = []
    for _ in range(args.repeats):
      start = time.monotonic()
      for _ in range(args.alone_steps):
        scratch, m = step_fn(scratch, batch, run.extras)
      jax.block_until_ready((scratch, m))
      alone.append((time.monotonic() - start) / args.alone_steps)
    del scratch
    step_alone = statistics.median(alone)
    delay = args.data_fraction * step_alone
    log(f"step alone {step_alone * 1e3:.1f} ms; the loop's data iterator takes {delay * 1e3:.1f} ms")
    run.data_iter = slowed(run.data_iter, delay)
    clocked = Clocked(step_fn)
    start = time.monotonic()
    loop.run_steps(run, state, clocked)
    loop_wall = time.monotonic() - start
  intervals = [b - a for a, b in zip(clocked.times, clocked.times[1:])]  # interval i ends at step i + 2
  steady = intervals[args.skip:]
  saves = [s - 1 for s in range(args.checkpoint_every, args.steps, args.checkpoint_every)]
  save_at = [intervals[i] for i in saves if args.skip <= i < len(intervals)]  # holds a save
  loop_step = statistics.median(steady)
  result = {
      "benchmark": "loop_overhead", "config": os.path.relpath(args.config, ROOT), "steps": args.steps,
      "devices": jax.device_count(), "backend": jax.default_backend(),
      "step_alone_s": step_alone, "step_alone_timings_s": alone, "data_delay_s": delay,
      "loop_step_s": loop_step, "overhead": loop_step / step_alone - 1,
      "loop_step_mean_s": statistics.mean(steady), "overhead_mean": statistics.mean(steady) / step_alone - 1,
      "save_interval_s": statistics.median(save_at) if save_at else None,
      "loop_wall_s": loop_wall, "cpu": cpu_model(), "loadavg": loadavg(),
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()

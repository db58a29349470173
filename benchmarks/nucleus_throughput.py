"""Top-p (nucleus) filtering over the full vocabulary: inference/sampling.py's (a top-k, else a
bisection) against a sort of each row (what it replaced, and what transformers' TopPLogitsWarper
does), same logits, same run. Prints JSON: median seconds per call of each side per logits kind and
batch size, their ratio, and how many tokens the two keep differently (float32 sums rounding across
top_p).

  python benchmarks/nucleus_throughput.py            # rows 16, 64, 256 of 100,352 logits, top_p 0.9
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench_common import cpu_model, loadavg, log  # (benchmarks/bench_common.py)
from phi4_jax.inference import sampling


def sorted_nucleus(logits_BxV: jax.Array, top_p: jax.Array) -> jax.Array:
  """The baseline: sort each row, keep tokens while the mass before them is < top_p."""
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  inside = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p
  cutoff_B1 = jnp.min(jnp.where(inside, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV < cutoff_B1, -jnp.inf, logits_BxV)


def timed(fn, x, rounds: int) -> float:
  jax.block_until_ready(fn(x))  # compile
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batches", default="16,64,256", help="rows per call, comma-separated")
  p.add_argument("--vocab", type=int, default=100_352)
  p.add_argument("--top_p", type=float, default=0.9)
  p.add_argument("--rounds", type=int, default=5, help="timed calls per side and batch size")
  args = p.parse_args(argv)
  top_p = jnp.float32(args.top_p)
  ours = jax.jit(lambda x: sampling.filter_logits(x, sampling.Sampler.make(1.0, 0, args.top_p), top_p))
  baseline = jax.jit(lambda x: sorted_nucleus(x, top_p))
  results = []
  # flat: the nucleus spans thousands of tokens (bisection); peaked: a trained model's next token,
  # the nucleus inside the top 64 of every row (one top-k)
  for kind, spread in (("flat", (1, 4)), ("peaked", (12, 30))):
    for batch in (int(b) for b in args.batches.split(",")):
      rng = np.random.default_rng(batch)
      x = jnp.asarray(rng.standard_normal((batch, args.vocab)) * rng.uniform(*spread, (batch, 1)), jnp.float32)
      kept, kept_by_sort = (np.isfinite(np.asarray(f(x))) for f in (ours, baseline))
      t_ours, t_sort = timed(ours, x, args.rounds), timed(baseline, x, args.rounds)
      log(f"{kind} batch {batch}: ours {t_ours * 1e3:.1f} ms, sort {t_sort * 1e3:.1f} ms")
      results.append({"logits": kind, "batch": batch, "ours_s": round(t_ours, 5), "sort_s": round(t_sort, 5),
                      "speedup": round(t_sort / t_ours, 2), "kept": int(kept_by_sort.sum()),
                      "kept_differently": int((kept != kept_by_sort).sum())})  # float32 sums at the edge
  print(json.dumps({"benchmark": "nucleus_throughput", "vocab": args.vocab, "top_p": args.top_p,
                    "rounds": args.rounds, "results": results, "cpu": cpu_model(), "loadavg": loadavg(),
                    "devices": str(jax.devices())}))


if __name__ == "__main__":
  main()

"""Data pipeline throughput vs raw tiktoken on the same documents, measured in the same run.

  python benchmarks/data_throughput.py [--config=experiments/pretrain.py:colab] [--threads=2]

Each repetition times the pipeline (packed, mixed batches; startup excluded) until it has emitted
`--tokens` tokens, then times `encode_ordinary_batch` with the same thread count on exactly the
documents the pipeline read in that window. Tokens include the <|endoftext|> separators (one per
document) on both sides. Prints one JSON line with the best repetition of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from phi4_jax import configs  # noqa: E402
from phi4_jax.data import corpus, make_train_iterator, measure, pipeline, planner  # noqa: E402
from phi4_jax.data.sources import Skip, open_source  # noqa: E402
from phi4_jax.tokenizer import Phi4Tokenizer  # noqa: E402


def _visits(it) -> dict[str, int]:
  sources = it.get_state()["mixers"]["0"]["sources"]  # one shard: visits are contiguous
  return {name: s["counters"]["visits_end"] for name, s in sources.items()}


def _documents(config, start: dict, end: dict) -> list[str]:
  """Texts of the visits each source's stream pulled between two states."""
  cache = corpus.cache_dir(config.data)
  texts = []
  for leaf in planner.leaves(config.data.sources):
    source = open_source(leaf, cache)
    _, records = measure.documents_in_play(leaf, source, cache)
    order = pipeline.epoch_order(leaf.name, source, records, config.seed)
    texts += [t for t in source.read(order(start[leaf.name], end[leaf.name])) if not isinstance(t, Skip)]
  return texts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="experiments/pretrain.py:colab")
  parser.add_argument("--threads", type=int, default=2,
                      help="grain read threads per source, and tiktoken threads")
  parser.add_argument("--tokens", type=float, default=4e6, help="tokens per timed repetition")
  parser.add_argument("--reps", type=int, default=3)
  args = parser.parse_args()
  # A budget that covers every timed repetition, whatever the preset's own steps.
  config = configs.load(args.config, {"data.read_threads": args.threads, "data.shards": 1,
                                      "data.total_tokens": args.tokens * (args.reps + 2)})
  tokenizer = Phi4Tokenizer()
  it = make_train_iterator(config)
  for _ in range(2):  # warm up: indexes, tokenizer tables, thread pools
    next(it)
  reps = []
  for _ in range(args.reps):
    start, tokens, t0 = _visits(it), 0, time.perf_counter()
    while tokens < args.tokens:
      tokens += int(next(it)["loss_mask"].sum())
    pipeline_s = time.perf_counter() - t0
    texts = _documents(config, start, _visits(it))
    t0 = time.perf_counter()
    ids = tokenizer.encode_ordinary_batch(texts, num_threads=args.threads)
    raw_s = time.perf_counter() - t0
    raw_tokens = sum(map(len, ids)) + len(ids)
    reps.append({"pipeline_tokens_per_s": tokens / pipeline_s, "raw_tokens_per_s": raw_tokens / raw_s,
                 "pipeline_tokens": tokens, "raw_tokens": raw_tokens, "documents": len(texts)})
  it.close()
  best_pipeline = max(r["pipeline_tokens_per_s"] for r in reps)
  best_raw = max(r["raw_tokens_per_s"] for r in reps)
  print(json.dumps({
      "benchmark": "data_throughput", "config": args.config, "seq_len": config.seq_len,
      "batch": config.global_batch_size, "threads": args.threads, "cpu_count": os.cpu_count(),
      "pipeline_tokens_per_s": round(best_pipeline), "raw_tiktoken_tokens_per_s": round(best_raw),
      "pipeline_over_raw": round(best_pipeline / best_raw, 3), "repetitions": reps}))


if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""Synthetic data throughput: a two-round self_revision pipeline on 64 seeds, the same pipeline code
(phi4_jax.synth.pipeline.run) with two generators on the same random weights:

  ours:  phi4_jax.synth.generator.SamplerGenerator (our KV-cache sampler: each step's asks across
         all items in one batched call, max_batch rows decoded together)
  hf:    a generator written as a careful user would with transformers: the step's asks in
         left-padded batches of max_batch rows, Phi3ForCausalLM.generate(do_sample=False,
         use_cache=True, eos_token_id=[<|im_end|>, <|endoftext|>]), loaded with from_pretrained from
         the folder phi4_jax.hf.save writes (fp32, sdpa, all cores)

Both decode greedily (temperature 0, retries 0), so both do the same work and should write the same
records. A random model writes no critique that parses, so the benchmark replaces the critique
parser by one that reads every score as 1: every item then runs both rounds (draft, critique,
revise, critique, revise, critique: six asks) and its final revision is accepted unless a cheap
check rejects it. Each side runs once on 8 seeds untimed (compiles), then the timed runs alternate
(--rounds, order flipped each round). Reported: median seconds per pipeline run, accepted tokens/s
(the accepted records' training tokens / seconds), generator tokens/s (prompt + reply tokens of every
ask / seconds), their ratios, and whether the two wrote the same records. distilabel's transformers
backend is reported where distilabel is installed beside us (it is not in our extras).

Prints ONE JSON object to stdout; progress goes to stderr.

  python benchmarks/synth_throughput.py            # d_model 512, 8 layers, 64 new tokens per ask
  python benchmarks/synth_throughput.py --quick    # a smoke check: tiny model, 8 seeds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

from bench_common import cpu_model, loadavg, log  # (benchmarks/bench_common.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

FULL_SHAPE = dict(vocab_size=100_352, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=64, d_ff=1792)
QUICK_SHAPE = dict(vocab_size=100_352, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=224)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny model, 8 seeds, 16 new tokens")
  p.add_argument("--seeds", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=64, help="max_new_tokens of every ask")
  p.add_argument("--max_batch", type=int, default=64, help="rows decoded together, both sides")
  p.add_argument("--rounds", type=int, default=1, help="timed runs per side")
  p.add_argument("--torch_threads", type=int, default=0, help="0 = all cores")
  args = p.parse_args(argv)
  if args.quick:
    args.seeds, args.new_tokens = 8, 16
  return args


class TransformersGenerator:
  """synth's generator protocol on transformers' generate: left-padded greedy batches."""

  def __init__(self, net, max_batch: int):
    self.net, self.max_batch, self.identity = net, max_batch, {"transformers": "Phi3ForCausalLM"}

  def chat(self, asks, keys):
    import torch

    from phi4_jax.posttrain import rollouts
    from phi4_jax.synth.generator import prompt_ids
    replies = [""] * len(asks)
    groups: dict[int, list[int]] = {}
    for i, ask in enumerate(asks):
      assert ask.temperature == 0, "the benchmark decodes greedily"
      groups.setdefault(ask.max_tokens, []).append(i)
    pad = rollouts.TOKENIZER.endoftext_id
    for max_tokens, members in sorted(groups.items()):
      for start in range(0, len(members), self.max_batch):
        batch = members[start:start + self.max_batch]
        prompts = [prompt_ids(asks[i].messages) for i in batch]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        with torch.inference_mode():
          out = self.net.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                  eos_token_id=list(rollouts.STOP_IDS), pad_token_id=pad, use_cache=True,
                                  temperature=None, top_p=None, top_k=None)
        for i, row in zip(batch, out[:, width:].tolist()):
          cut = next((k for k, t in enumerate(row) if t in rollouts.STOP_IDS), len(row))
          replies[i] = rollouts.TOKENIZER.decode(row[:cut])
    return replies


def seed_file(path: str, n: int) -> None:
  topics = ["the sum of two even numbers", "why ice floats on water", "how a binary search halves its range",
            "the area of a triangle", "why the sky is blue", "how compound interest grows",
            "what a prime number is", "how a hash table finds a key"]
  with open(path, "w") as f:
    for k in range(n):
      f.write(json.dumps({"id": f"task-{k:03d}", "question": f"Explain {topics[k % len(topics)]} "
                          f"to a student, with an example (task {k})."}) + "\n")


def pipeline_config(seeds: str, args):
  from phi4_jax.synth import pipeline
  return pipeline.pipeline({"self_revision": pipeline.entry(
      "self_revision", seeds, rounds=2, min_score=10, temperature=0.0, retries=0, max_new_tokens=args.new_tokens,
      min_tokens=0, items_per_round=args.seeds, max_batch=args.max_batch)})


def run_side(name, generator, seeds, args, tmp) -> dict:
  from phi4_jax.synth import pipeline
  out = os.path.join(tmp, f"{name}-{time.monotonic_ns()}")
  t0 = time.perf_counter()
  summary = pipeline.run(pipeline_config(seeds, args), generator, generator.identity, out, progress=None)
  seconds = time.perf_counter() - t0
  s = summary["types"]["self_revision"]
  with open(os.path.join(out, "self_revision.jsonl")) as f:
    records = [json.loads(line)["messages"] for line in f]
  return {"seconds": seconds, "accepted": s["accepted"], "accepted_tokens": s["unique_tokens"],
          "generator_tokens": s["generator_tokens"], "rejected": s["rejected"], "records": records}


def main(argv=None):
  args = parse_args(argv)
  import jax
  import torch
  from transformers import Phi3ForCausalLM

  from phi4_jax import hf, model as model_lib
  from phi4_jax.synth import generator as synth_generator, protocol
  protocol.parse_scores = lambda reply, names, low, high: {n: low for n in names}  # (see the docstring)
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  shape = QUICK_SHAPE if args.quick else FULL_SHAPE
  cfg = model_lib.ModelConfig(**shape, max_seq_len=2048, param_dtype="float32", dtype="float32")
  params = jax.jit(model_lib.init, static_argnums=0)(cfg, jax.random.key(0))
  load_start = loadavg()
  with tempfile.TemporaryDirectory() as tmp:
    hf.save(cfg, params, os.path.join(tmp, "hf"))
    net = Phi3ForCausalLM.from_pretrained(os.path.join(tmp, "hf"), dtype=torch.float32,
                                          attn_implementation="sdpa").float().eval()
    sides = {"ours": synth_generator.SamplerGenerator(cfg, params, {"ours": "random"}, args.max_batch),
             "hf": TransformersGenerator(net, args.max_batch)}
    warm, full = os.path.join(tmp, "warm.jsonl"), os.path.join(tmp, "seeds.jsonl")
    seed_file(warm, min(8, args.seeds))
    seed_file(full, args.seeds)
    for name, gen in sides.items():
      log(f"{name}: warm-up run on {min(8, args.seeds)} seeds")
      run_side(name, gen, warm, args, tmp)
    runs = {name: [] for name in sides}
    for r in range(args.rounds):
      for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
        runs[name].append(run_side(name, sides[name], full, args, tmp))
        log(f"{name}: round {r}: {runs[name][-1]['seconds']:.1f} s, {runs[name][-1]['accepted']} accepted")
  result = {"benchmark": "synth_throughput",
            "model": {**shape, "params": model_lib.param_count(cfg), "dtype": "float32"},
            "pipeline": {"type": "self_revision", "rounds": 2, "seeds": args.seeds, "asks_per_item": 6,
                         "max_new_tokens": args.new_tokens, "greedy": True, "max_batch": args.max_batch},
            "sides": {}}
  for name, rs in runs.items():
    sec = statistics.median(r["seconds"] for r in rs)
    result["sides"][name] = {"seconds_median": round(sec, 2), "accepted": rs[0]["accepted"],
                             "accepted_tokens": rs[0]["accepted_tokens"],
                             "generator_tokens": rs[0]["generator_tokens"],
                             "accepted_tokens_per_s": round(rs[0]["accepted_tokens"] / sec, 1),
                             "generator_tokens_per_s": round(rs[0]["generator_tokens"] / sec, 1),
                             "rejected": rs[0]["rejected"]}
  ours, theirs = result["sides"]["ours"], result["sides"]["hf"]
  result["ratio_accepted_tokens_per_s"] = round(
      ours["accepted_tokens_per_s"] / max(theirs["accepted_tokens_per_s"], 1e-9), 2)
  result["ratio_seconds"] = round(theirs["seconds_median"] / ours["seconds_median"], 2)
  same = [a == b for a, b in zip(runs["ours"][0]["records"], runs["hf"][0]["records"])]
  result["same_records"] = {"equal": sum(same), "ours": len(runs["ours"][0]["records"]),
                            "hf": len(runs["hf"][0]["records"])}
  result["target_ge_2x_hf"] = result["ratio_accepted_tokens_per_s"] >= 2
  result["distilabel"] = ("installed: not run (its pipeline API is not wired here)"
                          if importlib.util.find_spec("distilabel") else "not installed beside us")
  result["env"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_start": load_start, "load_end": loadavg(),
                   "jax": jax.__version__, "torch": torch.__version__,
                   "transformers": importlib.import_module("transformers").__version__}
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()

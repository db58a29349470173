"""Pivotal Token Search throughput: our batched search against the same search sampled the way the
only open PTS implementation does it (transformers `generate`, one prefix per call), same model,
same questions and settings, in the same run. Prints JSON.

  python benchmarks/pts_throughput.py --workdir=runs/colab/sft      # the colab recipe's SFT model

Both sides run posttrain/pts.py's search (the bisection, oracles and pairs are shared); only the
sampler differs: ours batches every prefix of a round of questions into one KV-cache decode loop;
the baseline calls Phi3ForCausalLM.generate(num_return_sequences=num_rollouts) once per prefix
(fp32, sdpa attention, KV cache) and scores log-probs with one forward per solution. Figures:
questions/hour and rollouts/s of each side and their ratio (the target is 5x). Their pairs differ
(different random draws) but come from the same distribution: both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from bench_common import cpu_model, loadavg, log  # (benchmarks/bench_common.py)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a model workdir (e.g. the colab recipe's sft stage)")
  p.add_argument("--questions", type=int, default=24, help="embedded parity questions searched")
  p.add_argument("--num_rollouts", type=int, default=32)
  p.add_argument("--max_new_tokens", type=int, default=12)
  p.add_argument("--temperature", type=float, default=0.5)
  p.add_argument("--questions_per_round", type=int, default=12)
  p.add_argument("--torch_threads", type=int, default=0, help="0 = all cores")
  return p.parse_args(argv)


class TransformersRoller:
  """pts.search's sampler interface over transformers: one generate call per prefix."""

  def __init__(self, net, sampling):
    self.net, self.sampling, self.rollouts = net, sampling, 0

  def sample(self, prompts, num_samples, sample_ids):
    import torch
    s, out = self.sampling, []
    for prompt, key in zip(prompts, sample_ids):
      torch.manual_seed(key)
      ids = torch.tensor([prompt], dtype=torch.long)
      with torch.inference_mode():
        gen = self.net.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                temperature=s.temperature, top_p=s.top_p, top_k=0,
                                max_new_tokens=s.max_new_tokens, num_return_sequences=num_samples,
                                eos_token_id=list(self.stop_ids), pad_token_id=self.stop_ids[0])
      for row in gen[:, ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in self.stop_ids), len(row))
        out.append(row[:cut])
    self.rollouts += len(prompts) * num_samples
    return out

  def logprobs(self, prompts, completions):
    import numpy as np
    import torch
    lps = []
    for prompt, completion in zip(prompts, completions):
      ids = torch.tensor([prompt + completion], dtype=torch.long)
      with torch.inference_mode():
        logits = self.net(ids).logits[0, len(prompt) - 1:-1].float()
      lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
      lps.append(np.asarray(lp, np.float32))
    return lps

  def estimate(self, requests):
    from phi4_jax.posttrain.rollouts import Roller
    return Roller.estimate(self, requests)


def timed_search(roller, questions, settings) -> dict:
  from phi4_jax.posttrain import pts
  spent = {"sample": 0.0, "logprobs": 0.0}

  def timed(name, method):
    def call(*args):
      begin = time.perf_counter()
      out = method(*args)  # (lists of host values: the work is done when it returns)
      spent[name] += time.perf_counter() - begin
      return out
    return call

  roller.sample, roller.logprobs = timed("sample", roller.sample), timed("logprobs", roller.logprobs)
  start, results = time.perf_counter(), []
  for begin in range(0, len(questions), settings.questions_per_round):
    results += pts.search(roller, questions[begin:begin + settings.questions_per_round], settings)
  seconds = time.perf_counter() - start
  return {"seconds": round(seconds, 2), "rollouts": roller.rollouts,
          "rollouts_per_s": round(roller.rollouts / seconds, 1),
          "sample_s": round(spent["sample"], 2), "logprobs_s": round(spent["logprobs"], 2),
          "questions_per_hour": round(len(questions) * 3600 / seconds, 1),
          "searched": sum(r["searched"] for r in results), "pivots": sum(len(r["pivots"]) for r in results),
          "pairs": sum(len(r["pairs"]) for r in results)}


def main(argv=None):
  args = parse_args(argv)
  import torch
  from transformers import Phi3ForCausalLM

  from phi4_jax import hf, inference
  from phi4_jax.posttrain import pts, rollouts, stages
  settings = pts.pts_fields()
  settings.num_rollouts, settings.max_new_tokens = args.num_rollouts, args.max_new_tokens
  settings.temperature, settings.questions_per_round = args.temperature, args.questions_per_round
  questions = stages.questions("corpus:parity", args.questions)
  cfg, params = inference.load(args.workdir)
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  # The warm-up is the whole search: a new Roller with the same seed draws the same rollouts, so the
  # timed run meets only shapes compiled here (a one-round warm-up left later rounds' buckets to
  # compile inside the timed search).
  log("ours: warming up on the whole search (compiles are not timed)")
  timed_search(rollouts.Roller(params, cfg, settings), questions, settings)
  log("ours: timed")
  ours = timed_search(rollouts.Roller(params, cfg, settings), questions, settings)
  with tempfile.TemporaryDirectory() as tmp:
    hf.save(cfg, params, tmp)
    net = Phi3ForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
  baseline = TransformersRoller(net, settings)
  baseline.stop_ids = rollouts.STOP_IDS
  log("transformers: timed")
  theirs = timed_search(baseline, questions, settings)
  print(json.dumps({
      "benchmark": "pts_throughput", "workdir": args.workdir, "questions": len(questions),
      "settings": {k: settings[k] for k in ("num_rollouts", "max_new_tokens", "temperature", "p_gap",
                                            "questions_per_round")},
      "ours": ours, "transformers": theirs,
      "ratio_questions_per_hour": round(ours["questions_per_hour"] / theirs["questions_per_hour"], 2),
      "ratio_rollouts_per_s": round(ours["rollouts_per_s"] / theirs["rollouts_per_s"], 2),
      "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg": loadavg(), "python": sys.version.split()[0],
  }, indent=1))


if __name__ == "__main__":
  main()

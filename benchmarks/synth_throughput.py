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
ask / seconds), their ratios, and whether the two wrote the same records.

Where distilabel is installed beside us (it is not in our extras; benchmarks/README.md says how),
a third side runs the same six asks as a distilabel Pipeline: LoadDataFromDicts, then six
TextGeneration steps (draft, critique, revise, critique, revise, critique), each with its own
distilabel.models.TransformersLLM on the same HF folder (fp32; its tokenizer's chat template renders
the same ChatML ids as ours), greedy (do_sample False, repetition_penalty 1.0: TransformersLLM's
defaults would sample), the same max_new_tokens, and the prompt file's sections as the steps'
Jinja templates (checked to render our prompt texts; each reads the previous steps' columns through
input_mappings); batches of max_batch rows, which distilabel's transformers pipeline decodes one
prompt at a time (it has no batch size). The final revision is accepted as the type would (empty
draft or revision rejected, then the engine's cheap checks) and counted with engine.record_tokens.
It runs in a fresh interpreter (distilabel forks a process per step; this one runs JAX's threads),
offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), without its cache (use_cache=False) and with its
cache dir in the benchmark's temp folder: once on the 8 warm-up seeds untimed, then one timed run.
Its seconds are the whole pipeline.run, which loads the model in each step's process; that load
stage (distilabel waits for every step to load before any batch) is also given apart, with the
rates and ratios both with and without it. Replies keep special tokens as text on our sides and
lose them on distilabel's (the transformers pipeline decodes with skip_special_tokens), and such
text is tokenized differently in a later prompt, so a record can differ where the model writes one.

Prints ONE JSON object to stdout; progress goes to stderr.

  python benchmarks/synth_throughput.py            # d_model 512, 8 layers, 64 new tokens per ask
  python benchmarks/synth_throughput.py --quick    # a smoke check: tiny model, 8 seeds
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import statistics
import subprocess
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
  p.add_argument("--distilabel_child", default="", help=argparse.SUPPRESS)  # (distilabel_side's own process)
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


# distilabel's side: six TextGeneration steps, one per ask of the type, each writing its own column.
# (step, prompt section, {template variable: the column it reads}, the column it writes)
DISTILABEL_STEPS = (
    ("draft", "draft", {}, "draft"),
    ("critique_0", "critique", {"response": "draft"}, "critique_0"),
    ("revise_1", "revise", {"response": "draft", "critique": "critique_0"}, "revision_1"),
    ("critique_1", "critique", {"response": "revision_1"}, "critique_1"),
    ("revise_2", "revise", {"response": "revision_1", "critique": "critique_1"}, "revision_2"),
    ("critique_2", "critique", {"response": "revision_2"}, "critique_2"))


def _jinja_literal(text: str) -> str:
  return "{% raw %}" + text + "{% endraw %}" if any(d in text for d in ("{{", "{%", "{#")) else text


def distilabel_templates(settings) -> dict[str, str]:
  """The prompt file's draft, critique and revise sections as TextGeneration templates (Jinja):
  {task} and {critique} are columns, {response} is a column trimmed as the type strips a reply, and
  the rubric's fixed values are written in. Checked to render the texts the type sends."""
  from jinja2 import Template

  from phi4_jax.synth.types import self_revision
  names = self_revision.rubric(settings)
  fixed = {"rubric": ", ".join(names), "scale": str(settings.scale),
           "format": "\n".join(f"{n}: <1-{settings.scale}>" for n in names)}
  columns = {"task": "{{ task }}", "response": "{{ response }}", "critique": "{{ critique }}"}
  templates = {}
  for section in ("draft", "critique", "revise"):
    pieces = re.split(r"\{(\w+)\}", self_revision.PROMPTS.sections[section])  # text, name, text, ...
    text = ""
    for k, piece in enumerate(pieces):
      if k % 2 and piece in columns:
        text += columns[piece]
      else:
        text += _jinja_literal(fixed.get(piece, "{%s}" % piece) if k % 2 else piece)
    # (TextGeneration's column check wants a bare `{{ response }}`, so the trim is a `set` ahead of it)
    templates[section] = ("{% set response = response | trim %}" if "{{ response }}" in text else "") + text
  values = {"task": "Explain {x} to a student.", "response": "\n a {{ draft }} \n\n", "critique": " ok.\n"}
  stripped = {**fixed, **values, "response": values["response"].strip()}
  for section, template in templates.items():
    sent = self_revision.PROMPTS.messages(section, **stripped)
    assert Template(template).render(**values) == sent[0]["content"], f"{section}: renders differently"
  return templates


def distilabel_side(hf_dir, seeds, args, warm=None) -> dict:
  """The six steps on distilabel (its Pipeline, TransformersLLM on hf_dir), in a fresh interpreter
  (distilabel forks a process per step, and this one runs JAX's threads): the `warm` seeds first,
  untimed, then `seeds` timed. Returns the timed run's seconds, load seconds and accepted records."""
  from phi4_jax.synth import engine, seeds as synth_seeds
  from phi4_jax.synth.types import self_revision
  settings = pipeline_config(seeds, args).self_revision
  tasks = lambda path: [{"id": it["id"], "task": it["task"]} for seed in synth_seeds.read(path)
                        for it in self_revision.items(seed, settings)]
  tmp = tempfile.mkdtemp(prefix="distilabel-", dir=os.path.dirname(hf_dir))
  # (TransformersLLM's defaults sample, at temperature 0.1 with a 1.1 repetition penalty)
  gen = {"max_new_tokens": args.new_tokens, "do_sample": False, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
         "repetition_penalty": 1.0}
  spec = {"hf_dir": hf_dir, "templates": distilabel_templates(settings), "generation_kwargs": gen,
          "batch": args.max_batch, "cache_dir": os.path.join(tmp, "cache"),
          "result": os.path.join(tmp, "result.json"),
          "runs": ([tasks(warm)] if warm else []) + [tasks(seeds)]}
  with open(os.path.join(tmp, "spec.json"), "w") as f:
    json.dump(spec, f)
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
         "DISTILABEL_CACHE_DIR": spec["cache_dir"], "HF_DATASETS_CACHE": os.path.join(tmp, "datasets"),
         "DISTILABEL_LOG_LEVEL": os.environ.get("DISTILABEL_LOG_LEVEL", "WARNING")}
  child = [sys.executable, os.path.abspath(__file__), "--distilabel_child", os.path.join(tmp, "spec.json")]
  subprocess.run(child, env=env, check=True, stdout=sys.stderr)  # (its prints are progress too)
  with open(spec["result"]) as f:
    runs = json.load(f)
  for r in runs[:-1]:
    log(f"distilabel: warm-up run on {len(r['rows'])} seeds: {r['seconds']:.1f} s "
        f"(load {r['load_seconds']:.1f} s)")
  timed = runs[-1]
  admission, records, rejected = engine.Admission(None, settings), [], collections.Counter()
  for row in timed["rows"]:
    final = [row[c] or "" for c in ("draft", "revision_1", "revision_2")]
    reason = ("empty" if not final[0].strip() else
              "empty_revision" if not all(x.strip() for x in final) else None)
    record = {"messages": [{"role": "user", "content": row["task"]},
                           {"role": "assistant", "content": final[-1].strip()}]}
    reason, tokens = (reason, 0) if reason else admission.cheap(record)
    if reason:
      rejected[reason] += 1
    else:
      admission.accept(record, tokens)
      records.append(record["messages"])
  return {"seconds": timed["seconds"], "load_seconds": timed["load_seconds"], "accepted": len(records),
          "accepted_tokens": admission.tokens, "rejected": dict(rejected), "records": records,
          "warm_seconds": [round(r["seconds"], 2) for r in runs[:-1]]}


def _distilabel_child(spec_path: str) -> None:
  """distilabel_side's process: each run of the spec through a fresh Pipeline, run without its cache;
  the seconds of pipeline.run, of its load stage (every step's TransformersLLM.load in its own
  process) and the rows, written to the spec's result file."""
  from distilabel.models import TransformersLLM
  from distilabel.pipeline import Pipeline
  from distilabel.steps import LoadDataFromDicts
  from distilabel.steps.tasks import TextGeneration
  with open(spec_path) as f:
    spec = json.load(f)
  results = []
  for k, rows in enumerate(spec["runs"]):
    with Pipeline(name=f"synth-self-revision-{k}", cache_dir=spec["cache_dir"]) as pipe:
      previous = LoadDataFromDicts(name="seeds", data=[{**r, "index": i} for i, r in enumerate(rows)],
                                   batch_size=spec["batch"])
      for name, section, reads, writes in DISTILABEL_STEPS:
        llm = TransformersLLM(model=spec["hf_dir"], torch_dtype="float32",
                              generation_kwargs=spec["generation_kwargs"])
        step = TextGeneration(name=name, llm=llm, template=spec["templates"][section],
                              columns=["task", *reads], input_mappings=reads,
                              output_mappings={"generation": writes},
                              input_batch_size=spec["batch"])
        previous = previous >> step
    load = [0.0]
    wait = pipe._run_stage_steps_and_wait  # (the load stage: distilabel waits for every step's load)

    def timed_wait(*a, **kw):
      t = time.perf_counter()
      try:
        return wait(*a, **kw)
      finally:
        load[0] += time.perf_counter() - t
    pipe._run_stage_steps_and_wait = timed_wait
    t0 = time.perf_counter()
    distiset = pipe.run(use_cache=False)
    seconds = time.perf_counter() - t0
    out = sorted(next(iter(distiset.values()))["train"].to_list(), key=lambda r: r["index"])
    keep = ("id", "task") + tuple(step[3] for step in DISTILABEL_STEPS)
    results.append({"seconds": seconds, "load_seconds": load[0],
                    "rows": [{c: r[c] for c in keep} for r in out]})
  with open(spec["result"], "w") as f:
    json.dump(results, f)


def distilabel_report(d: dict, ours: dict, our_records: list) -> dict:
  """The distilabel side's JSON: its timed run against our side's median."""
  per_s = d["accepted_tokens"] / d["seconds"]
  per_s_gen = d["accepted_tokens"] / max(d["seconds"] - d["load_seconds"], 1e-9)
  ours_per_s = ours["accepted_tokens_per_s"]
  return {"timed_runs": 1, "seconds": round(d["seconds"], 2), "load_seconds": round(d["load_seconds"], 2),
          "warm_up_seconds": d["warm_seconds"], "accepted": d["accepted"],
          "accepted_tokens": d["accepted_tokens"], "accepted_tokens_per_s": round(per_s, 1),
          "accepted_tokens_per_s_excluding_load": round(per_s_gen, 1), "rejected": d["rejected"],
          "ratio_ours_over_distilabel": round(ours_per_s / max(per_s, 1e-9), 2),
          "ratio_ours_over_distilabel_excluding_load": round(ours_per_s / max(per_s_gen, 1e-9), 2),
          "same_records_as_ours": {"equal": sum(a == b for a, b in zip(our_records, d["records"])),
                                   "ours": len(our_records), "distilabel": len(d["records"])}}


def distilabel_or_note(hf_dir, seeds, warm, args):
  """(the distilabel side's run, or None) and what the JSON says of it."""
  if not importlib.util.find_spec("distilabel"):
    return None, "not installed beside us"
  log(f"distilabel: warm-up run on {min(8, args.seeds)} seeds, then one timed run")
  try:
    d = distilabel_side(hf_dir, seeds, args, warm=warm)
  except subprocess.CalledProcessError as e:
    log(f"distilabel: its run failed (exit {e.returncode})")
    return None, f"installed, but its run failed (exit {e.returncode}; its log went to stderr)"
  log(f"distilabel: {d['seconds']:.1f} s (load stage {d['load_seconds']:.1f} s), {d['accepted']} accepted")
  return d, ("run: one timed run after a warm-up run; its seconds are the whole pipeline.run, the load stage "
             "(each step's model load) included and also given apart")


def main(argv=None):
  args = parse_args(argv)
  if args.distilabel_child:
    return _distilabel_child(args.distilabel_child)
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
    distil, distil_note = distilabel_or_note(os.path.join(tmp, "hf"), full, warm, args)
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
  if distil:
    result["sides"]["distilabel"] = distilabel_report(distil, ours, runs["ours"][0]["records"])
  result["distilabel"] = distil_note
  result["env"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_start": load_start, "load_end": loadavg(),
                   "jax": jax.__version__, "torch": torch.__version__,
                   "transformers": importlib.import_module("transformers").__version__}
  if distil:
    result["env"]["distilabel"] = importlib.import_module("distilabel").__version__
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()

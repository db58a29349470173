#!/usr/bin/env python
"""Decode throughput: our KV-cache sampler against transformers' generate and Tunix's sampler.

All three decode greedily, with no stop token, from the same random weights of one Phi-3-architecture
decoder (default: vocab 100,352, d_model 512, 8 layers, 8 query / 2 kv heads of 64, d_ff 1792, fp32),
prompt 128 tokens, 128 new tokens, at three shapes: 1 prompt, 16 prompts, and the Pivotal Token
Search shape (1 prompt x 64 samples).

  ours:  phi4_jax.inference.generate(params, cfg, prompts, max_new_tokens=N, stop_ids=(),
         num_samples=64 for the PTS shape: the prompt is prefilled once, its cache repeated)
  hf:    transformers Phi3ForCausalLM (torch, fp32, sdpa, all cores) loaded with from_pretrained
         from the folder phi4_jax.hf.save writes; model.generate(do_sample=False, use_cache=True,
         min_new_tokens=N, eos_token_id=None); PTS: the prompt repeated 64 times (transformers
         refuses num_return_sequences > 1 without sampling or beams)
  tunix: tunix.models.llama3 Llama3 with our params put into it (q/k/v and gate/up are separate
         weights on both sides; layouts match: q [D,H,Dh], o [H,Dh,D], MLP kernels [in,out],
         lm_head [D,V]; rotate-half RoPE; query head h reads kv head h // (H/K)), run by
         tunix.generate.sampler.Sampler (temperature 0 = greedy, eos_tokens=[-2] which never
         matches, pad id -1 which no token has); PTS: the prompt repeated 64 times

Tunix's Llama3 attention calls its RoPE without the config's rope_theta, so it always rotates with
theta 1e6: the benchmark's config uses rope_theta=1e6 on every side (it changes no cost).

Per shape, each side runs once untimed (its first call: compiles for the JAX sides; compile seconds
from jax.monitoring are reported separately), then --rounds timed calls alternate between the sides
(the order flips each round). The report is the median seconds per call and generated tokens/s
(rows x new tokens / median), the ratios ours/hf and ours/tunix, and whether the three produced the
same greedy tokens for the first prompt of the first timed round (when they differ, the first
differing position, and our logit gap there between the two candidates: a gap of float rounding
size is a tie broken differently, a larger one fails the run).

It also measures the machine's copy bandwidth (np.copyto of a ~1 GB float32 array, median of 5,
counted as read + write traffic) and gives the memory-bandwidth floor of one batch-1 decode step:
the bytes of every matmul weight (q, k, v, o, gate, up, down of every layer and the output layer,
fp32) plus one embedding row, over that bandwidth; our batch-1 seconds per token are reported as a
multiple of it. Our prefill and decode loop are also timed apart (via phi4_jax.inference.generate's
internals) to show where our time goes.

Prints ONE JSON object to stdout; progress goes to stderr. Tunix needs its own venv (it pins its
own transformers; see benchmarks/README.md):

  python benchmarks/decode_throughput.py                 # the full benchmark (~15-25 min on 2 cores)
  python benchmarks/decode_throughput.py --quick         # tiny shape, few tokens: a smoke check
  python benchmarks/decode_throughput.py --skip_tunix    # in a venv without Tunix
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from bench_common import cpu_model, loadavg, log  # (benchmarks/bench_common.py)
from decode_baselines import hf_side, tunix_side  # (benchmarks/decode_baselines.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

FULL_SHAPE = dict(vocab_size=100_352, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=64,
                  d_ff=1792)
QUICK_SHAPE = dict(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                   d_ff=224)
ROPE_THETA = 1e6  # the theta Tunix's Llama3 always uses (see the docstring)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny shape, few tokens: a smoke check")
  p.add_argument("--rounds", type=int, default=3, help="timed calls per side and shape, alternating")
  p.add_argument("--prompt_len", type=int, default=None, help="default 128 (16 with --quick)")
  p.add_argument("--new_tokens", type=int, default=None, help="default 128 (8 with --quick)")
  p.add_argument("--batch", type=int, default=None, help="prompts of the batch shape (16; 4 quick)")
  p.add_argument("--samples", type=int, default=None, help="samples of the PTS shape (64; 8 quick)")
  p.add_argument("--copy_mb", type=int, default=None, help="copy-bandwidth array (1024; 64 quick)")
  p.add_argument("--skip_tunix", action="store_true", help="no Tunix side (its ratio is then null)")
  p.add_argument("--skip_hf", action="store_true", help="no transformers side (its ratio is null)")
  p.add_argument("--torch_threads", type=int, default=0, help="0 = os.cpu_count()")
  p.add_argument("--gap_tol", type=float, default=1e-3,
                 help="largest logit gap between two sides' greedy tokens still taken for rounding")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  defaults = dict(prompt_len=(16, 128), new_tokens=(8, 128), batch=(4, 16), samples=(8, 64),
                  copy_mb=(64, 1024))
  for name, (quick, full) in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, quick if args.quick else full)
  return args


# ------------------------------------------------------------------------------------------------
# The model, the shapes and the weights.
# ------------------------------------------------------------------------------------------------

def make_cfg(args):
  from phi4_jax import model as model_lib
  shape = QUICK_SHAPE if args.quick else FULL_SHAPE
  max_len = max(1024, args.prompt_len + args.new_tokens)
  return shape, model_lib.ModelConfig(**shape, rope_theta=ROPE_THETA, max_seq_len=max_len,
                                      param_dtype="float32", dtype="float32")


def make_shapes(args, vocab: int) -> dict:
  """{name: (distinct prompts [list of int lists], samples per prompt)}; prompt 0 leads every shape."""
  import numpy as np
  rng = np.random.default_rng(args.seed)
  prompts = rng.integers(0, vocab, size=(args.batch, args.prompt_len)).tolist()
  return {"batch_1": (prompts[:1], 1), f"batch_{args.batch}": (prompts, 1),
          f"pts_1x{args.samples}": (prompts[:1], args.samples)}


def matmul_weight_bytes(cfg) -> int:
  """fp32 bytes of every matmul weight one decode step reads: the layers' and the output layer's."""
  d, h, k, dh, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  per_layer = d * h * dh * 2 + d * k * dh * 2 + 3 * d * f  # q and o, k and v, gate up down
  return 4 * (cfg.n_layers * per_layer + d * cfg.vocab_size)


class CompileClock:
  """Seconds JAX spends tracing, lowering and compiling, from jax.monitoring's duration events."""

  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")

  def __init__(self):
    import jax
    self.total = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **_):
    if event in self.EVENTS:
      self.total += duration


# ------------------------------------------------------------------------------------------------
# The three sides: each is run(prompts, samples) -> int array [rows, new_tokens].
# ------------------------------------------------------------------------------------------------

def ours_side(params, cfg, args):
  import numpy as np

  from phi4_jax import inference

  def run(prompts, samples):
    outs = inference.generate(params, cfg, prompts, max_new_tokens=args.new_tokens,
                              num_samples=samples, temperature=0.0, stop_ids=())
    return np.asarray(outs, np.int64)
  return run


def first_call(name, run, shape, clock) -> dict:
  """The side's untimed first call (compiles, for the JAX sides): its record."""
  compiled0, t0 = clock.total, time.perf_counter()
  tokens = run(*shape)
  side = {"run": run, "times": [], "cpu": [], "tokens": None,
          "first_call_s": time.perf_counter() - t0, "compile_s": clock.total - compiled0,
          "first_tokens": tokens}
  log(f"  {name}: first call {side['first_call_s']:.2f}s (compile {side['compile_s']:.2f}s), "
      f"tokens {tokens.shape}")
  return side


def timed_rounds(sides: dict, shape, rounds: int, clock) -> None:
  """Alternating timed calls (the order flips every round); keeps each side's first-round tokens
  and any JAX compile seconds inside timed calls (there should be none)."""
  names = list(sides)
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      side = sides[name]
      compiled0, t0, c0 = clock.total, time.perf_counter(), time.process_time()
      tokens = side["run"](*shape)
      side["times"].append(time.perf_counter() - t0)
      side["cpu"].append(time.process_time() - c0)
      side["timed_compile_s"] = side.get("timed_compile_s", 0.0) + clock.total - compiled0
      if side["tokens"] is None:
        side["tokens"] = tokens
      log(f"  round {r}: {name} {side['times'][-1]:.2f}s (load {loadavg()})")


def first_mismatch(a, b) -> int | None:
  """The first position where two token rows differ (a length difference counts), or None."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def logit_gap(params, cfg, prompt, ours_row, other_row, pos: int) -> float:
  """Our logit of our token minus our logit of the other side's token where they first differ."""
  import jax.numpy as jnp
  import numpy as np

  from phi4_jax import model as model_lib
  seq = np.asarray([list(prompt) + list(ours_row[:pos])], np.int32)
  logits = np.asarray(model_lib.forward(params, jnp.asarray(seq), cfg)[0, -1], np.float64)
  return float(logits[ours_row[pos]] - logits[other_row[pos]])


def greedy_check(sides: dict, params, cfg, prompt, samples: int, gap_tol: float) -> dict:
  """Do the sides agree on prompt 0's greedy tokens (first timed round)? A real disagreement (a
  first difference where our logits separate the two candidates by > gap_tol) goes into
  report["failures"]; main prints the JSON, then fails."""
  ours = [int(t) for t in sides["ours"]["tokens"][0]]
  report = {"compared": "row 0 (the first prompt) of the first timed round", "tokens_ours": ours}
  for name in [n for n in sides if n != "ours"]:
    other = [int(t) for t in sides[name]["tokens"][0]]
    pos = first_mismatch(ours, other)
    entry = {"identical": pos is None, "first_mismatch": pos}
    if pos is not None and pos < min(len(ours), len(other)):
      gap = logit_gap(params, cfg, prompt, ours, other, pos)
      entry.update(our_logit_gap_there=gap, tokens=(ours[pos], other[pos]),
                   rounding=abs(gap) <= gap_tol)
      if abs(gap) > gap_tol:
        report.setdefault("failures", []).append(
            f"ours and {name} disagree at token {pos} ({ours[pos]} vs {other[pos]}), our logit "
            f"gap {gap:.3g} > {gap_tol}: not rounding")
    elif pos is not None:
      report.setdefault("failures", []).append(f"{name}: {len(other)} tokens, ours {len(ours)}")
    report[f"ours_vs_{name}"] = entry
  if samples > 1:  # greedy samples of one prompt: every row should be row 0
    report["rows_equal_to_row_0"] = {name: f"{int((s['tokens'] == s['tokens'][0]).all(axis=1).sum())}"
                                           f" of {len(s['tokens'])}" for name, s in sides.items()}
  return report


def copy_bandwidth(mb: int, reps: int = 5) -> dict:
  """np.copyto of an mb-MiB float32 array (pages touched first): bytes read + written per second."""
  import threading

  import numpy as np
  src = np.ones(mb * 2**20 // 4, np.float32)
  dst = np.zeros_like(src)
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    np.copyto(dst, src)
    ts.append(time.perf_counter() - t0)
  single = 2 * src.nbytes / statistics.median(ts)
  n = os.cpu_count() or 1  # the same copy cut into one slice per core, one thread each
  cuts = np.linspace(0, src.size, n + 1).astype(int)
  ts_par = []
  for _ in range(reps):
    threads = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b]))
               for a, b in zip(cuts[:-1], cuts[1:])]
    t0 = time.perf_counter()
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    ts_par.append(time.perf_counter() - t0)
  return {"array_mib": mb, "reps": reps, "counts": "read + write (2 x array bytes per copy)",
          "np_copyto_gb_per_s": round(single / 1e9, 2),
          "copy_seconds": [round(t, 4) for t in ts],
          f"np_copyto_{n}_threads_gb_per_s": round(2 * src.nbytes / statistics.median(ts_par) / 1e9, 2)}


def ours_breakdown(params, cfg, args, prompts, samples: int, reps: int = 3) -> dict:
  """Our prefill and decode loop timed apart, called as inference.generate calls them (profiling
  only: it reaches into phi4_jax.inference.generate's internals)."""
  import jax
  import numpy as np

  from phi4_jax.inference import batching
  gen = importlib.import_module("phi4_jax.inference.generate")  # the module, not the function
  n = args.new_tokens
  req = gen.check_request(cfg, n, 0.0, 0, 1.0, samples, 0, ())
  group = batching.check_prompts(prompts, cfg, n)
  batch = batching.bucket(len(group), batching.MIN_BATCH_BUCKET)
  prompt_len = batching.bucket(max(len(p) for p in group), batching.MIN_PROMPT_BUCKET)
  cache_len = batching.bucket(prompt_len + n - 1, batching.MIN_PROMPT_BUCKET)
  tokens, pad = batching.left_padded(group, batch, prompt_len)
  row_ids = np.full((batch, samples), -1, np.int32)  # as _generate_group: batch-padding rows -1, done
  row_ids[:len(group)] = np.arange(len(group))[:, None] * samples + np.arange(samples)
  row_ids = row_ids.reshape(-1)
  done = np.repeat(np.arange(batch) >= len(group), samples)
  params = gen.decoder.split_layers(params)  # (as generate does, once per call)
  pre, dec = [], []
  for _ in range(reps):  # (both functions were compiled by the timed generate calls)
    t0 = time.perf_counter()
    sampling = (np.uint32(0), np.float32(1.0), np.float32(1.0))
    out, cache = gen._prefill(params, tokens, pad, row_ids, *sampling, cfg=cfg, cache_len=cache_len,
                              num_samples=samples, sampler=req.sampler, sharding=None)
    jax.block_until_ready((out, cache))
    t1 = time.perf_counter()
    out, steps, _, _ = gen._decode(params, cache, out, np.int32(1), done, np.repeat(pad, samples),
                                   row_ids, np.int32(n), np.int32(0), *sampling,
                                   np.asarray([-1], np.int32), cfg=cfg, prompt_len=prompt_len,
                                   sampler=req.sampler, sharding=None)
    jax.block_until_ready(out)
    pre.append(t1 - t0)
    dec.append(time.perf_counter() - t1)
  prefill_s, decode_s = statistics.median(pre), statistics.median(dec)
  return {"prefill_s": round(prefill_s, 4), "decode_loop_s": round(decode_s, 4),
          "decode_steps": n - 1, "decode_ms_per_step": round(1e3 * decode_s / (n - 1), 3),
          "cache_len": cache_len, "reps": reps,
          "how": "phi4_jax.inference.generate._prefill and ._decode timed apart, median"}


# ------------------------------------------------------------------------------------------------
# The report.
# ------------------------------------------------------------------------------------------------

def summarize(side, rows: int, new_tokens: int, jax_side: bool) -> dict:
  med = statistics.median(side["times"])
  return {"call_s_median": round(med, 4), "call_s_all": [round(t, 3) for t in side["times"]],
          "process_cpu_s_median": round(statistics.median(side["cpu"]), 3),
          "tokens_per_s": round(rows * new_tokens / med, 1),
          "first_call_s": round(side["first_call_s"], 2),
          "compile_s_first_call": round(side["compile_s"], 2) if jax_side else None,
          "compile_s_in_timed_calls": round(side["timed_compile_s"], 3) if jax_side else None}


def run_shape(name, shape, makers: dict, params, cfg, args, clock) -> dict:
  """One shape: every side's first call, the alternating timed rounds, the token check, ratios."""
  prompts, samples = shape
  rows = len(prompts) * samples
  log(f"{name}: {len(prompts)} prompt(s) x {samples} sample(s) = {rows} rows, "
      f"{args.prompt_len} + {args.new_tokens} tokens")
  sides = {side: first_call(side, run, shape, clock) for side, run in makers.items()}
  timed_rounds(sides, shape, args.rounds, clock)
  out = {"prompts": len(prompts), "samples_per_prompt": samples, "rows": rows,
         "generated_tokens_per_call": rows * args.new_tokens}
  for side, rec in sides.items():
    out[side] = summarize(rec, rows, args.new_tokens, jax_side=side != "hf")
  for other in ("hf", "tunix"):
    out[f"ratio_ours_over_{other}"] = (round(out["ours"]["tokens_per_s"] / out[other]["tokens_per_s"], 3)
                                       if other in out else None)
  out["ours_breakdown"] = ours_breakdown(params, cfg, args, prompts, samples)
  out["greedy_tokens"] = greedy_check(sides, params, cfg, prompts[0], samples, args.gap_tol)
  log(f"  {name}: " + ", ".join(f"{s} {out[s]['tokens_per_s']} tok/s" for s in sides))
  return out


def bandwidth_floor(cfg, args, batch1: dict, bw: dict) -> dict:
  per_token = matmul_weight_bytes(cfg) + 4 * cfg.d_model  # + the one embedding row looked up
  floor_s = per_token / (bw["np_copyto_gb_per_s"] * 1e9)
  ours_s = batch1["ours"]["call_s_median"] / args.new_tokens
  step_s = batch1["ours_breakdown"]["decode_ms_per_step"] / 1e3
  par = next(v for k, v in bw.items() if k.endswith("_threads_gb_per_s"))
  kv = 2 * cfg.n_layers * batch1["ours_breakdown"]["cache_len"] * cfg.n_kv_heads * cfg.head_dim * 4
  return {"weight_bytes_per_token": per_token,
          "counted": "q, k, v, o, gate, up, down of every layer + the output layer (fp32), + one "
                     "embedding row; not the KV cache (ours reads all its slots: "
                     f"{kv} bytes per step at batch 1) nor norm scales",
          "bandwidth_gb_per_s": bw["np_copyto_gb_per_s"],
          "floor_s_per_token": round(floor_s, 5),
          "ours_s_per_token": round(ours_s, 5),
          "ours_multiple_of_floor": round(ours_s / floor_s, 3),
          "ours_note": "whole generate call (prefill included) / new tokens, batch 1",
          "ours_decode_step_multiple_of_floor": round(step_s / floor_s, 3),
          "multiple_at_all_cores_copy_bandwidth": round(ours_s / (per_token / (par * 1e9)), 3)}


def env_info(load_start) -> dict:
  import jax
  info = {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "cpu": cpu_model(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": __import__("jaxlib").__version__, "flax": __import__("flax").__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "load_avg_start": load_start, "load_avg_end": loadavg()}
  for mod in ("torch", "transformers"):
    try:
      info[mod] = __import__(mod).__version__
    except ImportError:
      info[mod] = None
  return info


def main(argv=None):
  args = parse_args(argv)
  import jax

  from phi4_jax import model as model_lib
  shape, cfg = make_cfg(args)
  load_start = loadavg()
  log(f"load average at start: {load_start}")
  clock = CompileClock()
  params = jax.jit(model_lib.init, static_argnums=0)(cfg, jax.random.key(args.seed))
  result = {
      "benchmark": "decode_throughput",
      "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else argv)),
      "model": {**shape, "rope_theta": cfg.rope_theta, "norm_eps": cfg.norm_eps, "dtype": "float32",
                "params": model_lib.param_count(cfg)},
      "decode": {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "greedy": True,
                 "stop_ids": "none"},
      "timing": {"rounds": args.rounds, "statistic": "median seconds per call; tokens/s = rows x "
                 "new tokens / median (generated tokens only; prefill inside the call)",
                 "order": "alternating, flipped every round", "warm_up": "one untimed call"},
      "sides": {"ours": "phi4_jax.inference.generate (num_samples for the PTS shape)"},
  }
  makers = {"ours": ours_side(params, cfg, args)}
  with tempfile.TemporaryDirectory() as tmp:
    if not args.skip_hf:
      makers["hf"], info = hf_side(params, cfg, args, tmp)
      result["sides"]["hf"] = {"impl": "transformers Phi3ForCausalLM.generate, greedy, use_cache",
                               "pts": "prompt repeated per sample", **info}
    if not args.skip_tunix:
      makers["tunix"], info = tunix_side(params, cfg, args)
      result["sides"]["tunix"] = {"impl": "tunix Llama3 + tunix.generate.sampler.Sampler, greedy",
                                  "pts": "prompt repeated per sample", **info}
    result["shapes"] = {name: run_shape(name, s, makers, params, cfg, args, clock)
                        for name, s in make_shapes(args, cfg.vocab_size).items()}
  result["copy_bandwidth"] = bw = copy_bandwidth(args.copy_mb)
  log(f"copy bandwidth: {bw}")
  result["bandwidth_floor_batch_1"] = floor = bandwidth_floor(cfg, args, result["shapes"]["batch_1"], bw)
  ratios = lambda key: [s[key] for s in result["shapes"].values()]
  result["targets"] = {
      "ours_ge_2x_hf_every_shape": None if args.skip_hf else all(r >= 2 for r in ratios("ratio_ours_over_hf")),
      "ours_ge_1.2x_tunix_every_shape": None if args.skip_tunix else all(
          r >= 1.2 for r in ratios("ratio_ours_over_tunix")),
      "batch_1_within_2x_of_bandwidth_floor": floor["ours_multiple_of_floor"] <= 2.0,
  }
  result["env"] = env_info(load_start)
  print(json.dumps(result, indent=1))
  failures = [f"{name}: {f}" for name, shape in result["shapes"].items()
              for f in shape["greedy_tokens"].get("failures", [])]
  assert not failures, "greedy tokens disagree beyond rounding: " + "; ".join(failures)
  return result


if __name__ == "__main__":
  from phi4_jax import hugepages
  hugepages.reexec_with_hugepages()  # as train_throughput.py and `python -m phi4_jax.main` do
  main()

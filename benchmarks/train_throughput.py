#!/usr/bin/env python
"""Training throughput: our jitted train step against transformers + torch, same shape, same run.

Both sides train the same Phi-3-architecture decoder (default: vocab 100,352, d_model 512, 8 layers,
8 query / 2 kv heads of 64, d_ff 1792, seq 1024, batch 4, fp32) with AdamW (same lr, betas, eps,
weight decay, no decay on norm scales, global-norm clip 1.0) on one packed document per row
(segment_ids all 1, positions arange, full causal attention).

  ours:  jax.jit(phi4_jax.train.step.train_step, donate_argnums=0) over one [1, B, T] microbatch
  torch: transformers.Phi3ForCausalLM(attn_implementation="sdpa"), model(ids, labels=ids).loss,
         backward, clip_grad_norm_, torch.optim.AdamW.step, zero_grad

After compiling / warming up both, timed steps alternate between the two frameworks for --rounds
rounds (the order flips every round) so that load from other processes hits both; the report is
the median seconds per step. It also measures the machine's fp32 matmul FLOP/s (jnp.dot and
torch.mm on square matrices) and gives each side's model FLOP/s
(phi4_jax.model.flops_per_token x tokens/s) as a fraction of the best jnp.dot figure.

Prints ONE JSON object to stdout; progress goes to stderr.

  python benchmarks/train_throughput.py            # project code vs torch (~6 min on 2 cores)
  python benchmarks/train_throughput.py --quick    # tiny shape, smoke check

Investigation flags (see benchmarks/README.md for what they showed):
  --xla_flags=STR                 appended to XLA_FLAGS before jax is imported (write it with "=")
  --remat_policy/--scan_layers    ModelConfig overrides
  --attention auto|xla|blocked    ModelConfig.attention_impl, --attn_block its query block
  --loss_chunk N                  sequence chunk of the fused output layer + loss
  --skip_torch / --skip_matmul    for quick sweeps of our side only (ratio is then null)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from bench_common import cpu_model, loadavg, log  # (benchmarks/bench_common.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

FULL_SHAPE = dict(vocab_size=100_352, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=64,
                  d_ff=1792)
QUICK_SHAPE = dict(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                   d_ff=224)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=1, help="timed steps per framework per round")
  p.add_argument("--rounds", type=int, default=4, help="alternating rounds (order flips each round)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps per framework after compiling")
  p.add_argument("--seq_len", type=int, default=None, help="default 1024 (64 with --quick)")
  p.add_argument("--batch", type=int, default=None, help="default 4 (2 with --quick)")
  p.add_argument("--loss_chunk", type=int, default=None,
                 help="ours: sequence chunk of the fused output layer + loss (default 256; 16 with "
                      "--quick); 0 = one chunk")
  p.add_argument("--quick", action="store_true", help="tiny shape for a smoke check")
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--b1", type=float, default=0.9)
  p.add_argument("--b2", type=float, default=0.95)
  p.add_argument("--eps", type=float, default=1e-8)
  p.add_argument("--weight_decay", type=float, default=0.1)
  p.add_argument("--clip", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  # investigation knobs
  p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before jax is imported")
  p.add_argument("--remat_policy", default="none")
  p.add_argument("--scan_layers", default="true", choices=("true", "false"))
  p.add_argument("--attention", default="auto", choices=("auto", "xla", "blocked"),
                 help="ours: ModelConfig.attention_impl (auto = blocked on CPU)")
  p.add_argument("--attn_block", type=int, default=128, help="ModelConfig.attention_block")
  p.add_argument("--torch_threads", type=int, default=0, help="0 = os.cpu_count()")
  p.add_argument("--skip_torch", action="store_true", help="time ours only (no ratio)")
  p.add_argument("--skip_matmul", action="store_true", help="skip the matmul FLOP/s measurement")
  args = p.parse_args(argv)
  if args.seq_len is None:
    args.seq_len = 64 if args.quick else 1024
  if args.batch is None:
    args.batch = 2 if args.quick else 4
  if args.loss_chunk is None:
    args.loss_chunk = 16 if args.quick else 256
  return args


# ------------------------------------------------------------------------------------------------
# Inputs, optimizer and timing helpers.
# ------------------------------------------------------------------------------------------------

def make_batch(np_tokens):
  import jax.numpy as jnp
  import numpy as np
  b, t = np_tokens.shape
  ones = np.ones((b, t), np.int32)
  batch = {"tokens": np_tokens.astype(np.int32), "segment_ids": ones,
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
           "loss_mask": ones, "source_ids": np.zeros((b, t), np.int32)}
  return {k: jnp.asarray(v)[None] for k, v in batch.items()}  # [M=1, B, T]


def opt_config(args):
  from phi4_jax.train.config import optimizer_fields
  # constant learning rate (no warmup, no decay) so both sides apply the same update
  return optimizer_fields(peak_lr=args.lr, warmup_steps=0, end_lr_ratio=1.0, b1=args.b1, b2=args.b2,
                          eps=args.eps, weight_decay=args.weight_decay, decay_embeddings=True,
                          grad_clip_norm=args.clip)


def warm_up(step, warmup: int) -> dict:
  """Runs `step` (returning a loss) `warmup` times untimed but for the first; the side's record."""
  side = {"step": step, "times": [], "losses": []}
  t0 = time.perf_counter()
  side["losses"].append(step())
  side["first_step_s"] = time.perf_counter() - t0
  for _ in range(warmup - 1):
    side["losses"].append(step())
  return side


def median_seconds(fn, reps: int) -> float:
  """Median wall time of `reps` calls of fn (which must block until done), after one warm-up call."""
  fn()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def matmul_flops(sizes, reps=5):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  out = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    out[f"jnp_dot_{n}"] = 2 * n ** 3 / median_seconds(lambda: f(a, b).block_until_ready(), reps)
    ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
    out[f"torch_mm_{n}"] = 2 * n ** 3 / median_seconds(lambda: torch.mm(ta, tb), reps)
  return out


def output_layer_matmul_seconds(cfg, batch: int, seq_len: int, loss_chunk: int, reps: int = 3) -> float:
  """Median seconds of the output layer's three matmuls alone, as the fused loss runs them.

  Per sequence chunk: logits = h W, dh = logits W^T, dW += h^T logits (no softmax, no other
  work): a lower bound for any step that runs these matmuls at these shapes (other chunkings:
  benchmarks/README.md).
  """
  import jax
  import jax.numpy as jnp
  chunk = seq_len if loss_chunk <= 0 or seq_len % loss_chunk else loss_chunk
  n, rows = seq_len // chunk, batch * chunk
  h_NxRxD = jax.random.normal(jax.random.key(0), (n, rows, cfg.d_model), jnp.float32)
  w_DxV = jax.random.normal(jax.random.key(1), (cfg.d_model, cfg.vocab_size), jnp.float32)

  def matmuls(h_NxRxD, w_DxV):
    def one_chunk(dw_DxV, h_RxD):
      logits_RxV = h_RxD @ w_DxV
      return dw_DxV + h_RxD.T @ logits_RxV, logits_RxV @ w_DxV.T
    return jax.lax.scan(one_chunk, jnp.zeros_like(w_DxV), h_NxRxD)

  f = jax.jit(matmuls)
  return median_seconds(lambda: jax.block_until_ready(f(h_NxRxD, w_DxV)), reps)


def make_cfg(args):
  from phi4_jax import model as model_lib
  shape = QUICK_SHAPE if args.quick else FULL_SHAPE
  cfg = model_lib.ModelConfig(**shape, max_seq_len=max(args.seq_len, 1024), param_dtype="float32",
                              dtype="float32", remat_policy=args.remat_policy,
                              scan_layers=args.scan_layers == "true", attention_impl=args.attention,
                              attention_block=args.attn_block)
  return shape, cfg


def torch_side(args, cfg, np_tokens):
  """transformers' Phi3ForCausalLM (sdpa) + torch AdamW on the same shape: (warmed-up side, model)."""
  import torch
  from transformers import Phi3Config, Phi3ForCausalLM

  from phi4_jax import model as model_lib
  torch.manual_seed(args.seed)
  tcfg = Phi3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                    intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
                    num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                    max_position_embeddings=cfg.max_seq_len,
                    original_max_position_embeddings=cfg.max_seq_len,
                    rms_norm_eps=cfg.norm_eps, initializer_range=cfg.init_std,
                    rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                    tie_word_embeddings=False, use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0,
                    attention_dropout=0.0, sliding_window=None, pad_token_id=None,
                    bos_token_id=None, eos_token_id=None)
  tmodel = Phi3ForCausalLM(tcfg).float()
  tmodel.set_attn_implementation("sdpa")
  tmodel.train()
  head_dim = tcfg.hidden_size // tcfg.num_attention_heads
  assert head_dim == cfg.head_dim, (head_dim, cfg.head_dim)
  tparams = sum(p.numel() for p in tmodel.parameters())
  assert tparams == model_lib.param_count(cfg), (tparams, model_lib.param_count(cfg))
  decay = [p for n, p in tmodel.named_parameters() if "norm" not in n]
  no_decay = [p for n, p in tmodel.named_parameters() if "norm" in n]
  topt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=args.lr, betas=(args.b1, args.b2), eps=args.eps)
  ids = torch.from_numpy(np_tokens)

  def torch_step():
    loss = tmodel(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tmodel.parameters(), args.clip)
    topt.step()
    topt.zero_grad(set_to_none=True)
    return float(loss.detach())

  side = warm_up(torch_step, args.warmup)
  log(f"torch: first step {side['first_step_s']:.2f}s, loss {side['losses'][0]:.4f}, "
      f"attn {tmodel.config._attn_implementation}")
  return side, tmodel


def ours_side(args, cfg, np_tokens):
  """Our jitted train step on the same tokens: (warmed-up side, compile seconds)."""
  import functools

  import jax
  import jax.numpy as jnp

  from phi4_jax import model as model_lib
  from phi4_jax.train import step as step_lib
  from phi4_jax.train.optimizer import make_optimizer
  optimizer = make_optimizer(opt_config(args), total_steps=1_000_000)
  params = jax.jit(model_lib.init, static_argnums=0)(cfg, jax.random.key(args.seed))
  state = {"params": params, "opt_state": jax.jit(optimizer.init)(params), "step": jnp.int32(0)}
  batch = make_batch(np_tokens)
  loss_fn = functools.partial(step_lib.lm_loss_sums, cfg=cfg, num_sources=1, loss_chunk=args.loss_chunk)
  step_fn = jax.jit(functools.partial(step_lib.train_step, optimizer=optimizer, loss_fn=loss_fn),
                    donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0

  def step():
    nonlocal state
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    return float(metrics["loss"])

  side = warm_up(step, args.warmup)
  log(f"ours: compile {compile_s:.1f}s, first step {side['first_step_s']:.2f}s, "
      f"loss {side['losses'][0]:.4f}")
  return side, compile_s


def timed_rounds(sides, rounds: int, steps: int) -> None:
  """Alternating rounds (order flipped every round) so that load drifts hit both sides alike."""
  for r in range(rounds):
    for name, side in (sides if r % 2 == 0 else sides[::-1]):
      for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        side["losses"].append(side["step"]())
        side["times"].append(time.perf_counter() - t0)
        side.setdefault("cpu", []).append(time.process_time() - c0)
      log(f"round {r}: {name} {side['times'][-1]:.2f}s/step (load {loadavg()})")


def matmul_report(mm_runs):
  """(the report's matmul_fp32 entry, the reference FLOP/s) from the before/after matmul runs."""
  if not mm_runs:
    return None, None
  best = {k: round(max(run[k] for run in mm_runs) / 1e9, 1) for k in mm_runs[0]}
  ref_flops = max(v for k, v in best.items() if k.startswith("jnp_dot")) * 1e9
  return {"gflops_best_of_before_after": best,
          "each_run_gflops": [{k: round(v / 1e9, 1) for k, v in run.items()} for run in mm_runs],
          "reference_gflops": round(ref_flops / 1e9, 1),
          "reference": "best jnp.dot fp32 (median of 5 calls, best of before/after the rounds)"}, ref_flops


def summarize(side, extra, tokens_per_step, flops_per_token, ref_flops):
  med = statistics.median(side["times"])
  tok_s = tokens_per_step / med
  model_flops = flops_per_token * tok_s
  return {**extra,
          "step_s_median": round(med, 4),
          "step_s_all": [round(x, 3) for x in side["times"]],
          "process_cpu_s_median": round(statistics.median(side["cpu"]), 3),
          "tokens_per_s": round(tok_s, 1),
          "model_gflops_per_s": round(model_flops / 1e9, 2),
          "fraction_of_matmul_flops": round(model_flops / ref_flops, 4) if ref_flops else None,
          "first_step_s": round(side["first_step_s"], 2),
          "loss_first": round(side["losses"][0], 4), "loss_last": round(side["losses"][-1], 4)}


def compare_with_torch(result, cfg, args) -> float | None:
  """Adds the ours/torch ratios and the output layer's matmul floor; returns the tokens/s ratio."""
  if "torch" not in result:
    result["ratio_ours_over_torch_tokens_per_s"] = None
    return None
  ratio = result["ours"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
  result["ratio_ours_over_torch_tokens_per_s"] = round(ratio, 3)
  # load-robust secondary figure: process CPU seconds per step (both sides use every core)
  result["ratio_by_process_cpu_time"] = round(
      result["torch"]["process_cpu_s_median"] / result["ours"]["process_cpu_s_median"], 3)
  if not args.skip_matmul:
    floor_s = output_layer_matmul_seconds(cfg, args.batch, args.seq_len, args.loss_chunk)
    budget_s = result["torch"]["step_s_median"] / 1.5
    result["output_layer_floor"] = {
        "matmuls_only_s": round(floor_s, 3),
        "step_s_at_1.5x_torch": round(budget_s, 3),
        "share_of_that_step": round(floor_s / budget_s, 3),
        "note": "the output layer's 3 matmuls alone (shapes of the fused loss), nothing else"}
    log(f"output layer matmuls alone: {floor_s:.2f}s of a {budget_s:.2f}s step at 1.5x torch")
  return ratio


def env_info(load_start) -> dict:
  import jax
  import torch
  import transformers
  return {
      "device": str(jax.devices()[0]), "backend": jax.default_backend(), "cpu": cpu_model(),
      "cpu_count": os.cpu_count(),
      "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "python": platform.python_version(), "jax": jax.__version__,
      "jaxlib": __import__("jaxlib").__version__, "flax": __import__("flax").__version__,
      "optax": __import__("optax").__version__, "torch": torch.__version__,
      "transformers": transformers.__version__,
      "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "xla_cpu_threads": "XLA default (one per core)",
      "load_avg_start": load_start, "load_avg_end": loadavg(),
  }


def main(argv=None):
  args = parse_args(argv)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), args.xla_flags]).strip()
  import numpy as np

  from phi4_jax import model as model_lib
  shape, cfg = make_cfg(args)
  b, t = args.batch, args.seq_len
  tokens_per_step, flops_per_token = b * t, model_lib.flops_per_token(cfg, t)
  np_tokens = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, size=(b, t), dtype=np.int64)
  load_start = loadavg()
  log(f"load average at start: {load_start}")
  result = {
      "benchmark": "train_throughput",
      "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else argv)),
      "shape": {**shape, "seq_len": t, "batch": b, "dtype": "float32",
                "params": model_lib.param_count(cfg), "tokens_per_step": tokens_per_step,
                "model_flops_per_token": flops_per_token},
      "optimizer": {"lr": args.lr, "b1": args.b1, "b2": args.b2, "eps": args.eps,
                    "weight_decay": args.weight_decay, "clip_global_norm": args.clip,
                    "schedule": "constant", "no_decay": "norm scales"},
      "timing": {"warmup_steps": args.warmup, "rounds": args.rounds, "steps_per_round": args.steps,
                 "statistic": "median seconds per step over all timed steps"},
  }
  if not args.skip_torch or not args.skip_matmul:
    import torch
    torch.set_num_threads(args.torch_threads or os.cpu_count())
  torch_state, tmodel = torch_side(args, cfg, np_tokens) if not args.skip_torch else (None, None)
  ours, compile_s = ours_side(args, cfg, np_tokens)

  mm_sizes = (256, 512) if args.quick else (2048, 4096)
  mm_runs = [] if args.skip_matmul else [matmul_flops(mm_sizes)]
  timed_rounds([("ours", ours)] + ([("torch", torch_state)] if torch_state else []),
               args.rounds, args.steps)
  if not args.skip_matmul:
    mm_runs.append(matmul_flops(mm_sizes))
  for run in mm_runs:
    log("matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in run.items()))

  result["matmul_fp32"], ref_flops = matmul_report(mm_runs)
  per_step = (tokens_per_step, flops_per_token, ref_flops)
  result["ours"] = summarize(ours, {
      "impl": "jax.jit(phi4_jax.train.step.train_step, donate_argnums=0)",
      "loss_chunk": args.loss_chunk, "attention": f"{args.attention}/{args.attn_block}",
      "remat_policy": cfg.remat_policy, "scan_layers": cfg.scan_layers,
      "compile_s": round(compile_s, 1)}, *per_step)
  if torch_state:
    result["torch"] = summarize(torch_state, {
        "impl": "transformers.Phi3ForCausalLM sdpa + torch.optim.AdamW",
        "attn_implementation": tmodel.config._attn_implementation}, *per_step)
  ratio = compare_with_torch(result, cfg, args)
  frac = result["ours"]["fraction_of_matmul_flops"]
  result["targets"] = {
      "ratio_ge_1.5": None if ratio is None else bool(ratio >= 1.5),
      "fraction_of_matmul_ge_0.55": None if frac is None else bool(frac >= 0.55),
  }
  result["env"] = env_info(load_start)
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  from phi4_jax import hugepages
  hugepages.reexec_with_hugepages()  # what `python -m phi4_jax.main` does too; applies to both sides
  main()

#!/usr/bin/env python
"""DPO throughput: our jitted DPO train step against TRL's DPOTrainer (torch, CPU), same run.

Both sides train the same Phi-3-architecture decoder from the same weights (default: vocab
100,352, d_model 512, 8 layers, 8 query / 2 kv heads of 64, d_ff 1792, fp32) on the same token-id
pairs (prompt 128, chosen 64, rejected 64 tokens; 8 pairs per step), sigmoid DPO loss with beta
0.1, a reference that is a frozen copy of the initial policy whose log-probs are computed in every
step, AdamW with the same lr, betas, eps, weight decay (none on norm scales), global-norm clip and a
constant schedule.

  ours: jax.jit(train_step, donate_argnums=0) with loss_fn = dpo.dpo_loss_sums and
        extras={"reference": frozen params}, on packed rows: pair j of a row is segments 2j+1
        (prompt + chosen) and 2j+2 (prompt + rejected), as many pairs per row as fit in --seq_len
        (default 768 = exactly 2 pairs of 2 x 192 tokens: 4 rows, no padding), microbatch axis 1.
  trl:  trl.DPOTrainer(Phi3ForCausalLM.from_pretrained(folder phi4_jax.hf.save wrote), sdpa, fp32)
        with precompute_ref_log_probs=False (TRL loads the reference itself from the same folder),
        bf16=False and gradient_checkpointing=False (DPOConfig defaults both to True; ours runs
        fp32 without remat), a word-level tokenizer whose word "w<id>" is token id <id> (so its
        dataset preparation yields exactly our ids; each completion ends in the eos id so TRL adds
        none), trainer.train() itself: the real step (collated batch, compute_loss = policy and
        reference forwards on the concatenated chosen + rejected rows, backward, clip, optimizer
        step, scheduler step, zero_grad), timed from on_step_begin to on_step_end of a callback.

Timing: after compiling ours and warming both up (TRL's first --warmup steps of train() are
untimed), the callback runs our timed steps inside TRL's training loop, alternating: in even rounds
ours runs after TRL's step (on_step_end), in odd rounds before it (on_step_begin), so load drifts
hit both. Reported: median seconds per step, pairs/s, ratio ours/TRL, process CPU seconds per step.
Both first-step losses must be ln 2 within 1e-4 (policy == reference), or the run fails.

Prints ONE JSON object to stdout; progress goes to stderr.

  python benchmarks/dpo_throughput.py            # full shape (~10 min on 2 cores)
  python benchmarks/dpo_throughput.py --quick    # tiny shape, smoke check
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

from bench_common import cpu_model, loadavg, log  # (benchmarks/bench_common.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

FULL_SHAPE = dict(vocab_size=100_352, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=64,
                  d_ff=1792)
QUICK_SHAPE = dict(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                   d_ff=224)
LN2_TOL = 1e-4


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny shape, short pairs: a smoke check")
  p.add_argument("--rounds", type=int, default=4, help="alternating rounds (order flips each round)")
  p.add_argument("--steps", type=int, default=1, help="timed steps per side per round")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps per side (ours: after compiling)")
  p.add_argument("--prompt_len", type=int, default=None, help="default 128 (16 with --quick)")
  p.add_argument("--chosen_len", type=int, default=None, help="default 64 (8 with --quick)")
  p.add_argument("--rejected_len", type=int, default=None, help="default 64 (8 with --quick)")
  p.add_argument("--pairs", type=int, default=None, help="pairs per step (default 8; 4 with --quick)")
  p.add_argument("--seq_len", type=int, default=None,
                 help="ours: packed row length (default: 2 pairs' tokens, 768 at the default lengths)")
  p.add_argument("--loss_chunk", type=int, default=None,
                 help="ours: sequence chunk of the output layer (default 256; 16 with --quick)")
  p.add_argument("--beta", type=float, default=0.1)
  p.add_argument("--lr", type=float, default=1e-6)
  p.add_argument("--b1", type=float, default=0.9)
  p.add_argument("--b2", type=float, default=0.999)
  p.add_argument("--eps", type=float, default=1e-8)
  p.add_argument("--weight_decay", type=float, default=0.01)
  p.add_argument("--clip", type=float, default=1.0)
  p.add_argument("--torch_threads", type=int, default=0, help="0 = os.cpu_count()")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  defaults = dict(prompt_len=(16, 128), chosen_len=(8, 64), rejected_len=(8, 64), pairs=(4, 8),
                  loss_chunk=(16, 256))
  for name, (quick, full) in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, quick if args.quick else full)
  if args.seq_len is None:
    args.seq_len = 2 * pair_tokens(args)
  if args.seq_len < pair_tokens(args):
    p.error(f"--seq_len {args.seq_len} holds no pair of {pair_tokens(args)} tokens")
  return args


def pair_tokens(args) -> int:
  """Tokens of one packed pair: prompt + chosen, then prompt + rejected."""
  return 2 * args.prompt_len + args.chosen_len + args.rejected_len


# ------------------------------------------------------------------------------------------------
# The pairs, on both sides.
# ------------------------------------------------------------------------------------------------

def make_pairs(args, vocab: int) -> list[tuple[list[int], list[int], list[int]]]:
  """(prompt, chosen, rejected) token ids; every completion ends in the eos id (vocab - 1), the
  other ids avoid eos and pad (vocab - 2)."""
  import numpy as np
  rng = np.random.default_rng(args.seed)
  eos = vocab - 1
  draw = lambda n: rng.integers(0, vocab - 2, size=n).tolist()
  return [(draw(args.prompt_len), draw(args.chosen_len - 1) + [eos], draw(args.rejected_len - 1) + [eos])
          for _ in range(args.pairs)]


def pack_rows(pairs, seq_len: int) -> tuple[dict, int]:
  """Our DPO rows ([1, B, T] arrays, pair_source_ids [1, B, P]) and P, the pairs per row."""
  import jax.numpy as jnp
  import numpy as np
  per_pair = len(pairs[0][0]) * 2 + len(pairs[0][1]) + len(pairs[0][2])
  ppr = seq_len // per_pair
  rows = -(-len(pairs) // ppr)
  out = {k: np.zeros((rows, seq_len), np.int32) for k in ("tokens", "segment_ids", "positions", "loss_mask")}
  out["source_ids"] = np.zeros((rows, seq_len), np.int32)
  out["pair_source_ids"] = np.full((rows, ppr), -1, np.int32)
  for i, (prompt, chosen, rejected) in enumerate(pairs):
    r, j = divmod(i, ppr)
    offset = (per_pair * j)
    for k, completion in enumerate((chosen, rejected)):
      seq = prompt + completion
      out["tokens"][r, offset:offset + len(seq)] = seq
      out["segment_ids"][r, offset:offset + len(seq)] = 2 * j + 1 + k
      out["positions"][r, offset:offset + len(seq)] = np.arange(len(seq))
      out["loss_mask"][r, offset + len(prompt):offset + len(seq)] = 1
      offset += len(seq)
    out["pair_source_ids"][r, j] = 0
  return {k: jnp.asarray(v)[None] for k, v in out.items()}, ppr


# ------------------------------------------------------------------------------------------------
# Ours.
# ------------------------------------------------------------------------------------------------

def make_cfg(args):
  from phi4_jax import model as model_lib
  shape = QUICK_SHAPE if args.quick else FULL_SHAPE
  cfg = model_lib.ModelConfig(**shape, max_seq_len=max(args.seq_len, 1024), param_dtype="float32",
                              dtype="float32")
  return shape, cfg


def opt_config(args):
  from phi4_jax.train.config import optimizer_fields
  # constant learning rate (no warmup, no decay) so both sides apply the same update
  return optimizer_fields(peak_lr=args.lr, warmup_steps=0, end_lr_ratio=1.0, b1=args.b1, b2=args.b2,
                          eps=args.eps, weight_decay=args.weight_decay, decay_embeddings=True,
                          grad_clip_norm=args.clip)


def ours_side(args, cfg, params, batch):
  """Our jitted DPO step, compiled and warmed up: (side record, compile seconds)."""
  import jax
  import jax.numpy as jnp

  from phi4_jax.posttrain import dpo
  from phi4_jax.train.optimizer import make_optimizer
  from phi4_jax.train.step import train_step
  optimizer = make_optimizer(opt_config(args), total_steps=1_000_000)
  extras = {"reference": jax.tree.map(jnp.copy, params)}  # frozen; the policy's buffers are donated
  state = {"params": params, "opt_state": jax.jit(optimizer.init)(params), "step": jnp.int32(0)}
  loss_fn = functools.partial(dpo.dpo_loss_sums, cfg=cfg, beta=args.beta, label_smoothing=0.0,
                              loss_type="sigmoid", num_sources=1, chunk=args.loss_chunk)
  step_fn = jax.jit(functools.partial(train_step, optimizer=optimizer, loss_fn=loss_fn), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, extras).compile()
  compile_s = time.perf_counter() - t0
  side = {"times": [], "cpu": [], "losses": [], "pairs_counted": []}

  def step():
    nonlocal state
    state, metrics = compiled(state, batch, extras)
    jax.block_until_ready(state)
    side["pairs_counted"].append(float(metrics["denominator"]))
    return float(metrics["loss"])

  side["step"] = step
  t0 = time.perf_counter()
  side["losses"].append(step())
  side["first_step_s"] = time.perf_counter() - t0
  for _ in range(args.warmup - 1):
    side["losses"].append(step())
  log(f"ours: compile {compile_s:.1f}s, first step {side['first_step_s']:.2f}s, "
      f"loss {side['losses'][0]:.6f}")
  return side, compile_s


def timed(side) -> None:
  t0, c0 = time.perf_counter(), time.process_time()
  side["losses"].append(side["step"]())
  side["times"].append(time.perf_counter() - t0)
  side["cpu"].append(time.process_time() - c0)


# ------------------------------------------------------------------------------------------------
# TRL.
# ------------------------------------------------------------------------------------------------

def word_tokenizer(vocab: int):
  """A fast tokenizer whose whitespace-separated word "w<id>" is token id <id>."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"w{vocab - 1}",
                                 pad_token=f"w{vocab - 2}", unk_token="w0")


def pairs_dataset(pairs):
  """TRL's standard (non-conversational) preference format; prompt + chosen re-tokenizes to the ids."""
  from datasets import Dataset
  words = lambda ids: " ".join(f"w{i}" for i in ids)
  return Dataset.from_dict({"prompt": [words(p) for p, _, _ in pairs],
                            "chosen": [" " + words(c) for _, c, _ in pairs],
                            "rejected": [" " + words(r) for _, _, r in pairs]})


def run_trl(args, cfg, hf_dir, pairs, ours, out_dir):
  """Builds TRL's DPOTrainer and runs train(): warm-up steps, then timed steps alternating with
  ours (which the callback runs). Returns (trl side record, trainer info)."""
  import torch
  import transformers
  import trl
  from transformers import Phi3ForCausalLM, TrainerCallback

  policy = Phi3ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
  total = args.warmup + args.rounds * args.steps
  config = trl.DPOConfig(
      output_dir=out_dir, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
      max_steps=total, learning_rate=args.lr, adam_beta1=args.b1, adam_beta2=args.b2,
      adam_epsilon=args.eps, weight_decay=args.weight_decay, max_grad_norm=args.clip,
      lr_scheduler_type="constant", warmup_steps=0, beta=args.beta, loss_type=["sigmoid"],
      label_smoothing=0.0, precompute_ref_log_probs=False, max_length=None, bf16=False, fp16=False,
      gradient_checkpointing=False, use_cpu=True, seed=args.seed, data_seed=args.seed,
      logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
      dataloader_num_workers=0)
  side = {"times": [], "cpu": [], "losses": []}

  class RecordingDPOTrainer(trl.DPOTrainer):
    def training_step(self, *a, **k):
      loss = super().training_step(*a, **k)
      side["losses"].append(float(loss))
      return loss

  t0 = time.perf_counter()
  trainer = RecordingDPOTrainer(model=policy, ref_model=None, args=config, train_dataset=pairs_dataset(pairs),
                                processing_class=word_tokenizer(cfg.vocab_size))
  side["init_s"] = time.perf_counter() - t0
  prepared = trainer.train_dataset
  got = [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in prepared]
  assert got == [tuple(map(list, p)) for p in pairs], "TRL's prepared dataset differs from our ids"
  assert trainer.ref_model is not None and trainer.ref_model is not trainer.model

  class Clock(TrainerCallback):
    def on_train_begin(self, a, state, control, **kw):
      opt = trainer.optimizer
      side["optimizer"] = type(getattr(opt, "optimizer", opt)).__name__
      side["param_groups"] = [{"params": len(g["params"]), "weight_decay": g["weight_decay"],
                               "lr": g["lr"], "betas": list(g["betas"]), "eps": g["eps"],
                               "fused": g.get("fused")} for g in opt.param_groups]

    def on_step_begin(self, a, state, control, **kw):
      s = state.global_step
      r = (s - args.warmup) // args.steps
      if s >= args.warmup and r % 2 == 1 and (s - args.warmup) % args.steps == 0:
        for _ in range(args.steps):
          timed(ours)
        log(f"round {r}: ours {ours['times'][-1]:.2f}s/step (load {loadavg()})")
      side["_t0"], side["_c0"] = time.perf_counter(), time.process_time()

    def on_step_end(self, a, state, control, **kw):
      dt, dc = time.perf_counter() - side["_t0"], time.process_time() - side["_c0"]
      s = state.global_step - 1  # the step that just ended
      if s == 0:
        side["first_step_s"] = dt
        log(f"trl: first step {dt:.2f}s, loss {side['losses'][0]:.6f}")
      if s < args.warmup:
        return
      side["times"].append(dt)
      side["cpu"].append(dc)
      r = (s - args.warmup) // args.steps
      log(f"round {r}: trl {dt:.2f}s/step (load {loadavg()})")
      if r % 2 == 0 and (s - args.warmup) % args.steps == args.steps - 1:
        for _ in range(args.steps):
          timed(ours)
        log(f"round {r}: ours {ours['times'][-1]:.2f}s/step (load {loadavg()})")

  trainer.add_callback(Clock())
  with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its final log dict: keep stdout JSON
    trainer.train()
  info = {"trl": trl.__version__, "transformers": transformers.__version__,
          "attn_implementation": trainer.model.config._attn_implementation,
          "ref_attn_implementation": trainer.ref_model.config._attn_implementation,
          "optim": str(config.optim), "gradient_checkpointing": config.gradient_checkpointing,
          "bf16": config.bf16, "precompute_ref_log_probs": config.precompute_ref_log_probs,
          "padding_free": trainer.padding_free}
  return side, info


# ------------------------------------------------------------------------------------------------
# Report.
# ------------------------------------------------------------------------------------------------

def summarize(side, pairs: int, extra: dict) -> dict:
  med = statistics.median(side["times"])
  return {**extra, "step_s_median": round(med, 3), "step_s_all": [round(t, 3) for t in side["times"]],
          "pairs_per_s": round(pairs / med, 3),
          "process_cpu_s_median": round(statistics.median(side["cpu"]), 3),
          "first_step_s": round(side["first_step_s"], 2),
          "loss_first": round(side["losses"][0], 7), "loss_last": round(side["losses"][-1], 7)}


def env_info(load_start) -> dict:
  import jax
  import torch
  return {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "cpu": cpu_model(),
          "cpu_count": os.cpu_count(),
          "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": __import__("jaxlib").__version__, "flax": __import__("flax").__version__,
          "optax": __import__("optax").__version__, "torch": torch.__version__,
          "accelerate": __import__("accelerate").__version__,
          "datasets": __import__("datasets").__version__,
          "torch_threads": torch.get_num_threads(),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "load_avg_start": load_start, "load_avg_end": loadavg()}


def main(argv=None):
  args = parse_args(argv)
  import jax
  import torch

  from phi4_jax import hf
  from phi4_jax import model as model_lib
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  load_start = loadavg()
  log(f"load average at start: {load_start}")
  shape, cfg = make_cfg(args)
  pairs = make_pairs(args, cfg.vocab_size)
  batch, ppr = pack_rows(pairs, args.seq_len)
  rows = batch["tokens"].shape[1]
  ln2 = math.log(2.0)
  result = {
      "benchmark": "dpo_throughput",
      "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else argv)),
      "shape": {**shape, "dtype": "float32", "params": model_lib.param_count(cfg)},
      "pairs": {"per_step": args.pairs, "prompt_len": args.prompt_len, "chosen_len": args.chosen_len,
                "rejected_len": args.rejected_len, "tokens_per_pair": pair_tokens(args),
                "completion_ends_in_eos": True},
      "dpo": {"beta": args.beta, "loss_type": "sigmoid", "label_smoothing": 0.0,
              "reference": "frozen copy of the initial policy, log-probs computed in every step"},
      "optimizer": {"lr": args.lr, "b1": args.b1, "b2": args.b2, "eps": args.eps,
                    "weight_decay": args.weight_decay, "no_decay": "norm scales",
                    "clip_global_norm": args.clip, "schedule": "constant"},
      "timing": {"warmup_steps": args.warmup, "rounds": args.rounds, "steps_per_round": args.steps,
                 "statistic": "median seconds per step over all timed steps",
                 "order": "alternating, flipped every round"},
  }
  params = jax.jit(model_lib.init, static_argnums=0)(cfg, jax.random.key(args.seed))
  with tempfile.TemporaryDirectory(prefix="dpo_bench_") as tmp:
    hf_dir = os.path.join(tmp, "hf")
    hf.save(cfg, params, hf_dir)  # before our step donates the policy's buffers
    ours, compile_s = ours_side(args, cfg, params, batch)
    del params
    trl_side, trl_info = run_trl(args, cfg, hf_dir, pairs, ours, os.path.join(tmp, "trl_out"))

  result["ours"] = summarize(ours, args.pairs, {
      "impl": "jax.jit(train_step(loss_fn=dpo.dpo_loss_sums), donate_argnums=0), extras={'reference'}",
      "packing": {"seq_len": args.seq_len, "pairs_per_row": ppr, "rows": rows, "microbatches": 1,
                  "padding_fraction": round(1 - args.pairs * pair_tokens(args) / (rows * args.seq_len), 4)},
      "loss_chunk": args.loss_chunk, "attention": cfg.attention_impl, "compile_s": round(compile_s, 1),
      "pairs_counted_per_step": ours["pairs_counted"][0]})
  result["trl"] = summarize(trl_side, args.pairs, {
      "impl": "trl.DPOTrainer.train(): step timed from on_step_begin to on_step_end",
      "batch": f"{2 * args.pairs} rows of {args.prompt_len + max(args.chosen_len, args.rejected_len)} "
               "(chosen rows then rejected rows, padded to the longest)",
      "init_s": round(trl_side["init_s"], 1), **trl_info,
      "optimizer": trl_side.get("optimizer"), "param_groups": trl_side.get("param_groups")})
  ratio = result["ours"]["pairs_per_s"] / result["trl"]["pairs_per_s"]
  result["ratio_ours_over_trl_pairs_per_s"] = round(ratio, 3)
  result["ratio_by_process_cpu_time"] = round(
      result["trl"]["process_cpu_s_median"] / result["ours"]["process_cpu_s_median"], 3)
  first = {"ours": ours["losses"][0], "trl": trl_side["losses"][0]}
  result["first_step_loss_check"] = {
      "ln2": round(ln2, 7), "tolerance": LN2_TOL,
      **{k: round(v, 7) for k, v in first.items()},
      "ok": all(abs(v - ln2) <= LN2_TOL for v in first.values())}
  result["targets"] = {"ratio_ge_1.5": bool(ratio >= 1.5)}
  result["env"] = env_info(load_start)
  print(json.dumps(result, indent=1))
  assert result["first_step_loss_check"]["ok"], f"first-step DPO loss is not ln 2: {first}"
  return result


if __name__ == "__main__":
  from phi4_jax import hugepages
  hugepages.reexec_with_hugepages()  # as train_throughput.py: applies to both sides
  main()

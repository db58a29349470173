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

  python benchmarks/train_throughput.py                 # project code vs torch (~6-8 min, 2 cores)
  python benchmarks/train_throughput.py --recommended --check   # with the recommended changes
  python benchmarks/train_throughput.py --quick         # tiny shape, smoke check (~40 s)

Investigation flags (all default to the project's code as-is; see benchmarks/README.md):
  --xla_flags=STR         appended to XLA_FLAGS before jax is imported (write it with "=")
  --matmul_precision P    jax_default_matmul_precision (default: leave unset)
  --remat_policy/--scan_layers   ModelConfig overrides
  --loss_impl             step (phi4_jax.train.step as-is) | step_lse (manual logsumexp) |
                          step_vd (lm_head kernel transposed to [V, D] before the chunk loop) |
                          nocheckpoint (chunked, logits kept for the backward pass) |
                          fused (custom_vjp: the output layer's gradients are computed in the
                          forward pass of each chunk, so no logits are recomputed)
  --accumulate direct     no length-1 microbatch scan / zero gradient accumulator when M == 1
  --attention blocked     causal attention in query blocks that skip fully masked key blocks
  --attention blocked_vjp the same with a flash-style custom VJP (keeps only the log-sum-exp)
  --skip_torch / --skip_matmul   for quick sweeps of our side only (ratio is then null)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

FULL_SHAPE = dict(vocab_size=100_352, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=64,
                  d_ff=1792)
QUICK_SHAPE = dict(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                   d_ff=224)
LOSS_IMPLS = ("step", "step_lse", "step_vd", "nocheckpoint", "fused")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=1, help="timed steps per framework per round")
  p.add_argument("--rounds", type=int, default=4, help="alternating rounds (order flips each round)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps per framework after compiling")
  p.add_argument("--seq_len", type=int, default=None, help="default 1024 (64 with --quick)")
  p.add_argument("--batch", type=int, default=None, help="default 4 (2 with --quick)")
  p.add_argument("--loss_chunk", type=int, default=None,
                 help="ours: sequence chunk of the fused output layer + loss (default 512, the "
                      "project default; 16 with --quick); 0 = one chunk")
  p.add_argument("--quick", action="store_true", help="tiny shape for a smoke check")
  p.add_argument("--recommended", action="store_true",
                 help="ours with the changes recommended in benchmarks/README.md: --loss_impl fused "
                      "--loss_chunk 256 --attention blocked_vjp --attn_block 128 --remat_policy none "
                      "(explicit flags still win)")
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--b1", type=float, default=0.9)
  p.add_argument("--b2", type=float, default=0.95)
  p.add_argument("--eps", type=float, default=1e-8)
  p.add_argument("--weight_decay", type=float, default=0.1)
  p.add_argument("--clip", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  # investigation knobs
  p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before jax is imported")
  p.add_argument("--matmul_precision", default="",
                 help="jax_default_matmul_precision, e.g. highest | float32 | bfloat16 (unset: default)")
  p.add_argument("--remat_policy", default="none")
  p.add_argument("--scan_layers", default="true", choices=("true", "false"))
  p.add_argument("--loss_impl", default="step", choices=LOSS_IMPLS)
  p.add_argument("--attention", default="xla", choices=("xla", "blocked", "blocked_vjp"),
                 help="ours: xla = jax.nn.dot_product_attention (the project's path); blocked = "
                      "causal attention in query blocks that skip fully masked key blocks; "
                      "blocked_vjp = the same with a flash-style custom VJP (saves only the "
                      "log-sum-exp, recomputes probabilities in the backward pass)")
  p.add_argument("--attn_block", type=int, default=256, help="query block of --attention blocked")
  p.add_argument("--accumulate", default="scan", choices=("scan", "direct"),
                 help="ours: scan = the project's lax.scan over microbatches; direct = no scan "
                      "(and no zero-initialised gradient accumulator) when there is one microbatch")
  p.add_argument("--torch_threads", type=int, default=0, help="0 = os.cpu_count()")
  p.add_argument("--torch_foreach", default="default", choices=("default", "true", "false"),
                 help="torch.optim.AdamW(foreach=...); default leaves torch's choice")
  p.add_argument("--skip_torch", action="store_true", help="time ours only (no ratio)")
  p.add_argument("--skip_matmul", action="store_true", help="skip the matmul FLOP/s measurement")
  p.add_argument("--check", action="store_true",
                 help="before timing, check --loss_impl/--attention/--accumulate (gradients and one "
                      "train step) against the project's code on the quick shape")
  args = p.parse_args(argv)
  if args.recommended:
    given = set(a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv))
    for flag, value in (("--loss_impl", "fused"), ("--loss_chunk", 16 if args.quick else 256),
                        ("--attention", "blocked_vjp"), ("--attn_block", 16 if args.quick else 128),
                        ("--remat_policy", "none")):
      if flag not in given:
        setattr(args, flag[2:], value)
  if args.seq_len is None:
    args.seq_len = 64 if args.quick else 1024
  if args.batch is None:
    args.batch = 2 if args.quick else 4
  if args.loss_chunk is None:
    args.loss_chunk = 16 if args.quick else 512
  return args


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def loadavg():
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------
# Alternative loss implementations for our side (monkeypatched into phi4_jax.train.step).
# ------------------------------------------------------------------------------------------------

def install_loss_impl(name: str):
  """Patches phi4_jax.train.step so that train_step uses loss implementation `name`."""
  import functools

  import jax
  import jax.numpy as jnp

  from phi4_jax import model as model_lib
  from phi4_jax.train import step as step_lib

  if name == "step":
    return

  def _split(hidden_BxTxD, targets_BxT, chunk):
    b, t, d = hidden_BxTxD.shape
    chunk = t if chunk <= 0 or t % chunk else chunk
    h = hidden_BxTxD.reshape(b, t // chunk, chunk, d).swapaxes(0, 1)
    y = targets_BxT.reshape(b, t // chunk, chunk).swapaxes(0, 1)
    return h, y, chunk

  if name in ("step_lse", "step_vd", "nocheckpoint"):
    def chunked_cross_entropy(hidden_BxTxD, kernel_DxV, targets_BxT, chunk, dtype):
      b, t, _ = hidden_BxTxD.shape
      h_N, y_N, chunk = _split(hidden_BxTxD, targets_BxT, chunk)
      kernel = kernel_DxV.astype(dtype)
      if name == "step_vd":
        kernel = kernel.T  # [V, D]
      spec = "bcd,vd->bcv" if name == "step_vd" else "bcd,dv->bcv"

      def one_chunk(h_BxCxD, y_BxC):
        logits = jnp.einsum(spec, h_BxCxD.astype(dtype), kernel, preferred_element_type=jnp.float32)
        target_logit = jnp.take_along_axis(logits, y_BxC[..., None], axis=-1)[..., 0]
        if name == "step_lse":
          m = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
          lse = jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1)) + m[..., 0]
        else:
          lse = jax.nn.logsumexp(logits, axis=-1)
        return lse - target_logit

      if name != "nocheckpoint":
        one_chunk = jax.checkpoint(one_chunk)
      nll = jax.lax.map(lambda xs: one_chunk(*xs), (h_N, y_N))
      return nll.swapaxes(0, 1).reshape(b, t)

    step_lib.chunked_cross_entropy = chunked_cross_entropy
    return

  assert name == "fused", name

  # (loss_sum, nll) = fused_xent(hidden, kernel, targets, weights): loss_sum = sum(weights * nll).
  # The forward pass of each chunk also computes that chunk's d loss_sum / d hidden and adds its
  # d loss_sum / d kernel into a [D, V] accumulator, so the backward pass only scales them by the
  # incoming cotangent: three output-layer matmuls per chunk instead of four (no recomputed logits)
  # and no [B, C, V] residuals. nll is returned for metrics only; its cotangent is ignored.
  @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
  def fused_xent(hidden_BxTxD, kernel_DxV, targets_BxT, weights_BxT, chunk):
    (loss, nll), _ = _fused_fwd(hidden_BxTxD, kernel_DxV, targets_BxT, weights_BxT, chunk)
    return loss, nll

  def _fused_fwd(hidden_BxTxD, kernel_DxV, targets_BxT, weights_BxT, chunk):
    b, t, d = hidden_BxTxD.shape
    v = kernel_DxV.shape[1]
    h_N, y_N, chunk = _split(hidden_BxTxD, targets_BxT, chunk)
    w_N = weights_BxT.reshape(b, t // chunk, chunk).swapaxes(0, 1)

    def body(dkernel_DxV, xs):
      h_BxCxD, y_BxC, w_BxC = xs
      logits = jnp.einsum("bcd,dv->bcv", h_BxCxD, kernel_DxV, preferred_element_type=jnp.float32)
      m = logits.max(axis=-1, keepdims=True)
      e = jnp.exp(logits - m)
      s = e.sum(axis=-1, keepdims=True)
      target_logit = jnp.take_along_axis(logits, y_BxC[..., None], axis=-1)[..., 0]
      nll = (jnp.log(s) + m)[..., 0] - target_logit
      is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == y_BxC[..., None]
      dlogits = (e * (w_BxC[..., None] / s) - jnp.where(is_target, w_BxC[..., None], 0.0))
      dlogits = dlogits.astype(kernel_DxV.dtype)
      dh = jnp.einsum("bcv,dv->bcd", dlogits, kernel_DxV, preferred_element_type=jnp.float32)
      dkernel_DxV = dkernel_DxV + jnp.einsum("bcd,bcv->dv", h_BxCxD, dlogits,
                                             preferred_element_type=jnp.float32)
      return dkernel_DxV, (nll, dh.astype(h_BxCxD.dtype))

    dkernel, (nll_N, dh_N) = jax.lax.scan(body, jnp.zeros((d, v), jnp.float32), (h_N, y_N, w_N))
    nll = nll_N.swapaxes(0, 1).reshape(b, t)
    dh = dh_N.swapaxes(0, 1).reshape(b, t, d)
    loss = jnp.sum(nll * weights_BxT)
    return (loss, nll), (dh, dkernel.astype(kernel_DxV.dtype), targets_BxT, weights_BxT)

  def _fused_bwd(chunk, res, cotangents):
    dh, dkernel, targets, weights = res
    g_loss, _ = cotangents  # nll is for metrics only
    zeros_like_int = lambda x: jnp.zeros(x.shape, jax.dtypes.float0)
    return (g_loss * dh, g_loss * dkernel, zeros_like_int(targets), jnp.zeros_like(weights))

  fused_xent.defvjp(_fused_fwd, _fused_bwd)

  def loss_sums(params, batch, cfg, num_sources, loss_chunk, mesh=None):
    hidden = model_lib.forward(params, batch["tokens"], cfg, segment_ids=batch["segment_ids"],
                               positions=batch["positions"], mesh=mesh, return_hidden=True)
    targets, weights, sources = step_lib.next_token_targets(batch)
    dtype = jnp.dtype(cfg.dtype)
    loss_sum, nll_BxT = fused_xent(hidden.astype(dtype), params["lm_head"]["kernel"].astype(dtype),
                                   targets, weights, loss_chunk)
    nll_BxT = jax.lax.stop_gradient(nll_BxT)
    onehot_BxTxS = jax.nn.one_hot(sources, num_sources, dtype=jnp.float32) * weights[..., None]
    sums = {
        "loss_sum": loss_sum,
        "tokens": weights.sum(),
        "source_loss_sum": jnp.einsum("bt,bts->s", nll_BxT, onehot_BxTxS),
        "source_tokens": onehot_BxTxS.sum(axis=(0, 1)),
    }
    return loss_sum, sums

  step_lib.loss_sums = loss_sums


def install_single_microbatch_step():
  """Patches phi4_jax.train.step.train_step: with one microbatch (M == 1) the gradients come
  straight from jax.grad instead of a length-1 lax.scan that adds them into a zero-initialised
  fp32 copy of every parameter; M > 1 is unchanged."""
  import jax
  import jax.numpy as jnp
  import optax

  from phi4_jax.train import step as step_lib
  scan_step = step_lib.train_step

  def train_step(state, batch_MxBxT, *, optimizer, cfg, num_sources, loss_chunk, mesh=None):
    if jax.tree.leaves(batch_MxBxT)[0].shape[0] != 1:
      return scan_step(state, batch_MxBxT, optimizer=optimizer, cfg=cfg, num_sources=num_sources,
                       loss_chunk=loss_chunk, mesh=mesh)
    params = state["params"]
    mb = jax.tree.map(lambda x: x[0], batch_MxBxT)
    grads, sums = jax.grad(step_lib.loss_sums, has_aux=True)(params, mb, cfg, num_sources,
                                                             loss_chunk, mesh)
    sums = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), sums)
    denom = jnp.maximum(sums["tokens"], 1.0)
    grads = jax.tree.map(lambda g, p: (g.astype(jnp.float32) / denom).astype(p.dtype), grads, params)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
                 "step": state["step"] + 1}
    metrics = {"loss": sums["loss_sum"] / denom, "grad_norm": optax.tree.norm(grads),
               "tokens": sums["tokens"], "source_loss_sum": sums["source_loss_sum"],
               "source_tokens": sums["source_tokens"]}
    return new_state, metrics

  step_lib.train_step = train_step


def install_blocked_attention(block: int, custom_vjp: bool = False):
  """Patches jax.nn.dot_product_attention (as phi4_jax.model.layers calls it) with a causal
  attention computed in query blocks of `block` rows: block i only looks at keys [0, (i+1)*block),
  so the fully masked upper-right key blocks are never computed, stored or differentiated
  (T/block = 4 -> 62.5% of the score matrix). Same math as the XLA path (fp32 softmax).

  custom_vjp=True: the forward pass keeps only the output and the log-sum-exp of each row, and the
  backward pass recomputes each query block's probabilities as exp(s - lse) (flash-attention style
  gradients: dS = P * (dP - rowsum(dO * O))) instead of differentiating max/exp/sum/divide."""
  import functools

  import jax
  import jax.numpy as jnp

  from phi4_jax.model import layers

  neg = jnp.finfo(jnp.float32).min

  def blocks(t):
    nb = block if 0 < block < t and t % block == 0 else t
    return [(i * nb, (i + 1) * nb) for i in range(t // nb)]

  def allowed_block(mask, q0, q1):
    allowed = (jnp.arange(q0, q1)[:, None] >= jnp.arange(q1)[None, :])[None, None, None]
    if mask is not None:  # [B, 1, T, S] -> [B, 1, 1, Q, S]
      allowed = allowed & mask[:, :, None, q0:q1, :q1]
    return allowed

  def plain(query, key, value, mask, scale):
    b, t, h, dh = query.shape
    k = key.shape[2]
    q_BxTxKxGxD = query.reshape(b, t, k, h // k, dh)
    outs = []
    for q0, q1 in blocks(t):
      s_BxKxGxQxS = jnp.einsum("bqkgd,bskd->bkgqs", q_BxTxKxGxD[:, q0:q1], key[:, :q1],
                               preferred_element_type=jnp.float32) * scale
      s_BxKxGxQxS = jnp.where(allowed_block(mask, q0, q1), s_BxKxGxQxS, neg)
      p = jax.nn.softmax(s_BxKxGxQxS, axis=-1).astype(value.dtype)
      outs.append(jnp.einsum("bkgqs,bskd->bqkgd", p, value[:, :q1]))
    return jnp.concatenate(outs, axis=1).reshape(b, t, h, dh).astype(query.dtype)

  def _fwd(query, key, value, mask, scale):
    b, t, h, dh = query.shape
    k = key.shape[2]
    q_BxKxGxTxD = query.reshape(b, t, k, h // k, dh).transpose(0, 2, 3, 1, 4)
    k_BxKxSxD, v_BxKxSxD = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
    outs, lses = [], []
    for q0, q1 in blocks(t):
      s = jnp.einsum("bkgqd,bksd->bkgqs", q_BxKxGxTxD[:, :, :, q0:q1], k_BxKxSxD[:, :, :q1],
                     preferred_element_type=jnp.float32) * scale
      s = jnp.where(allowed_block(mask, q0, q1), s, neg)
      m = s.max(axis=-1, keepdims=True)
      e = jnp.exp(s - m)
      l = e.sum(axis=-1, keepdims=True)
      outs.append(jnp.einsum("bkgqs,bksd->bkgqd", (e / l).astype(value.dtype), v_BxKxSxD[:, :, :q1]))
      lses.append((m + jnp.log(l))[..., 0])
    o_BxKxGxTxD = jnp.concatenate(outs, axis=3)
    lse = jnp.concatenate(lses, axis=3)
    out = o_BxKxGxTxD.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh).astype(query.dtype)
    return out, (query, key, value, mask, o_BxKxGxTxD, lse)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
  def flash(query, key, value, mask, scale):
    return _fwd(query, key, value, mask, scale)[0]

  def _bwd(scale, res, dout):
    query, key, value, mask, o_BxKxGxTxD, lse = res
    b, t, h, dh = query.shape
    k = key.shape[2]
    g = h // k
    q_BxKxGxTxD = query.reshape(b, t, k, g, dh).transpose(0, 2, 3, 1, 4)
    k_BxKxSxD, v_BxKxSxD = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
    do_BxKxGxTxD = dout.reshape(b, t, k, g, dh).transpose(0, 2, 3, 1, 4).astype(jnp.float32)
    delta = jnp.sum(do_BxKxGxTxD * o_BxKxGxTxD.astype(jnp.float32), axis=-1)  # [B,K,G,T]
    dqs, dk, dv = [], jnp.zeros(k_BxKxSxD.shape, jnp.float32), jnp.zeros(v_BxKxSxD.shape, jnp.float32)
    for q0, q1 in blocks(t):
      qi, doi = q_BxKxGxTxD[:, :, :, q0:q1], do_BxKxGxTxD[:, :, :, q0:q1]
      s = jnp.einsum("bkgqd,bksd->bkgqs", qi, k_BxKxSxD[:, :, :q1],
                     preferred_element_type=jnp.float32) * scale
      p = jnp.where(allowed_block(mask, q0, q1), jnp.exp(s - lse[..., q0:q1, None]), 0.0)
      dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, v_BxKxSxD[:, :, :q1],
                      preferred_element_type=jnp.float32)
      ds = p * (dp - delta[..., q0:q1, None]) * scale
      dqs.append(jnp.einsum("bkgqs,bksd->bkgqd", ds, k_BxKxSxD[:, :, :q1]))
      dk = dk.at[:, :, :q1].add(jnp.einsum("bkgqs,bkgqd->bksd", ds, qi))
      dv = dv.at[:, :, :q1].add(jnp.einsum("bkgqs,bkgqd->bksd", p, doi))
    dq = jnp.concatenate(dqs, axis=3).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)
    dmask = None if mask is None else jnp.zeros(mask.shape, jax.dtypes.float0)
    return (dq.astype(query.dtype), dk.transpose(0, 2, 1, 3).astype(key.dtype),
            dv.transpose(0, 2, 1, 3).astype(value.dtype), dmask)

  flash.defvjp(_fwd, _bwd)

  def attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                implementation=None, **unused):
    assert bias is None and is_causal and not any(v is not None and v is not False
                                                  for v in unused.values()), unused
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return (flash if custom_vjp else plain)(query, key, value, mask, scale)

  class _Nn:  # jax.nn with dot_product_attention replaced, for phi4_jax.model.layers only
    def __getattr__(self, name):
      return attention if name == "dot_product_attention" else getattr(jax.nn, name)

  class _Jax:
    nn = _Nn()

    def __getattr__(self, name):
      return getattr(jax, name)

  layers.jax = _Jax()


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


def check_variants(args):
  """Gradients and one full train step with --loss_impl/--attention/--accumulate against the
  project's code on the quick shape (with some unweighted targets); returns the worst relative
  error and raises SystemExit above 1e-4."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  from phi4_jax import model as model_lib
  from phi4_jax.model import layers
  from phi4_jax.train import step as step_lib
  from phi4_jax.train.optimizer import make_optimizer

  cfg = model_lib.ModelConfig(**QUICK_SHAPE, max_seq_len=64)
  params = model_lib.init(cfg, jax.random.key(0))
  tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 64), 0, cfg.vocab_size))
  batch_MxBxT = make_batch(tokens)
  batch_MxBxT["loss_mask"] = batch_MxBxT["loss_mask"].at[:, :, 40:].set(0)
  batch = {k: v[0] for k, v in batch_MxBxT.items()}
  optimizer = make_optimizer(opt_config(args), total_steps=100)
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}

  def run():
    grads = jax.grad(step_lib.loss_sums, has_aux=True)(params, batch, cfg, 1, 16)
    step = jax.jit(functools.partial(step_lib.train_step, optimizer=optimizer, cfg=cfg,
                                     num_sources=1, loss_chunk=16))
    return grads, step(state, batch_MxBxT)

  saved = (step_lib.loss_sums, step_lib.chunked_cross_entropy, step_lib.train_step)
  ref = run()
  install_loss_impl(args.loss_impl)
  if args.attention != "xla":  # 4 blocks of the 64-token quick rows
    install_blocked_attention(16, custom_vjp=args.attention == "blocked_vjp")
  if args.accumulate == "direct":
    install_single_microbatch_step()
  new = run()
  step_lib.loss_sums, step_lib.chunked_cross_entropy, step_lib.train_step = saved
  layers.jax = jax
  err = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30)),
                     ref, new)
  worst = max(jax.tree.leaves(err))
  name = f"{args.loss_impl}/{args.attention}/{args.accumulate}"
  log(f"check {name}: loss {float(ref[0][1]['loss_sum']):.6f} vs {float(new[0][1]['loss_sum']):.6f}, "
      f"worst relative error over gradients, metrics and updated state {worst:.2e}")
  if worst > 1e-4:
    raise SystemExit(f"--check failed for {name}: {err}")
  return worst


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
    f(a, b).block_until_ready()
    ts = []
    for _ in range(reps):
      t0 = time.perf_counter()
      f(a, b).block_until_ready()
      ts.append(time.perf_counter() - t0)
    out[f"jnp_dot_{n}"] = 2 * n ** 3 / statistics.median(ts)
    ta, tb = torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b))
    torch.mm(ta, tb)
    ts = []
    for _ in range(reps):
      t0 = time.perf_counter()
      torch.mm(ta, tb)
      ts.append(time.perf_counter() - t0)
    out[f"torch_mm_{n}"] = 2 * n ** 3 / statistics.median(ts)
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), args.xla_flags]).strip()

  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  if args.matmul_precision:
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)

  from phi4_jax import model as model_lib
  from phi4_jax.train import step as step_lib
  from phi4_jax.train.optimizer import make_optimizer

  check_err = check_variants(args) if args.check else None
  install_loss_impl(args.loss_impl)
  if args.attention != "xla":
    install_blocked_attention(args.attn_block, custom_vjp=args.attention == "blocked_vjp")
  if args.accumulate == "direct":
    install_single_microbatch_step()

  shape = QUICK_SHAPE if args.quick else FULL_SHAPE
  cfg = model_lib.ModelConfig(**shape, max_seq_len=max(args.seq_len, 1024), param_dtype="float32",
                              dtype="float32", remat_policy=args.remat_policy,
                              scan_layers=args.scan_layers == "true", attention_impl="xla")
  b, t = args.batch, args.seq_len
  tokens_per_step = b * t
  flops_per_token = model_lib.flops_per_token(cfg, t)
  rng = np.random.default_rng(args.seed)
  np_tokens = rng.integers(0, cfg.vocab_size, size=(b, t), dtype=np.int64)
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

  # ------------------------------------------------------------------ torch
  torch_state = None
  if not args.skip_torch or not args.skip_matmul:
    import torch
    torch_threads = args.torch_threads or os.cpu_count()
    torch.set_num_threads(torch_threads)
  if not args.skip_torch:
    from transformers import Phi3Config, Phi3ForCausalLM

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
    foreach = {"default": None, "true": True, "false": False}[args.torch_foreach]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=args.lr, betas=(args.b1, args.b2), eps=args.eps, foreach=foreach)
    ids = torch.from_numpy(np_tokens)

    def torch_step():
      loss = tmodel(input_ids=ids, labels=ids).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(tmodel.parameters(), args.clip)
      topt.step()
      topt.zero_grad(set_to_none=True)
      return float(loss.detach())

    torch_state = {"step": torch_step, "times": [], "losses": []}
    t0 = time.perf_counter()
    torch_state["losses"].append(torch_step())
    torch_state["first_step_s"] = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
      torch_state["losses"].append(torch_step())
    log(f"torch: first step {torch_state['first_step_s']:.2f}s, loss {torch_state['losses'][0]:.4f}, "
        f"attn {tmodel.config._attn_implementation}")

  # ------------------------------------------------------------------ ours
  optimizer = make_optimizer(opt_config(args), total_steps=1_000_000)
  params = jax.jit(model_lib.init, static_argnums=0)(cfg, jax.random.key(args.seed))
  state = {"params": params, "opt_state": jax.jit(optimizer.init)(params), "step": jnp.int32(0)}
  batch = make_batch(np_tokens)
  step_fn = jax.jit(functools.partial(step_lib.train_step, optimizer=optimizer, cfg=cfg,
                                      num_sources=1, loss_chunk=args.loss_chunk),
                    donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  ours = {"times": [], "losses": []}

  def ours_step():
    nonlocal state
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    return float(metrics["loss"])

  ours["step"] = ours_step
  t0 = time.perf_counter()
  ours["losses"].append(ours_step())
  ours["first_step_s"] = time.perf_counter() - t0
  for _ in range(args.warmup - 1):
    ours["losses"].append(ours_step())
  log(f"ours: compile {compile_s:.1f}s, first step {ours['first_step_s']:.2f}s, "
      f"loss {ours['losses'][0]:.4f}")

  # ------------------------------------------------------------------ matmul peak (before)
  mm_sizes = (256, 512) if args.quick else (2048, 4096)
  mm_runs = []
  if not args.skip_matmul:
    mm_runs.append(matmul_flops(mm_sizes))
    log("matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in mm_runs[-1].items()))

  # ------------------------------------------------------------------ alternating timed rounds
  sides = [("ours", ours)] + ([("torch", torch_state)] if torch_state else [])
  for r in range(args.rounds):
    order = sides if r % 2 == 0 else sides[::-1]
    for name, side in order:
      for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        side["losses"].append(side["step"]())
        side["times"].append(time.perf_counter() - t0)
        side.setdefault("cpu", []).append(time.process_time() - c0)
      log(f"round {r}: {name} {side['times'][-1]:.2f}s/step (load {loadavg()})")

  if not args.skip_matmul:
    mm_runs.append(matmul_flops(mm_sizes))
    log("matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in mm_runs[-1].items()))

  # ------------------------------------------------------------------ report
  matmul = None
  ref_flops = None
  if mm_runs:
    matmul = {k: round(max(run[k] for run in mm_runs) / 1e9, 1) for k in mm_runs[0]}
    ref_flops = max(v for k, v in matmul.items() if k.startswith("jnp_dot")) * 1e9
    matmul = {"gflops_best_of_before_after": matmul,
              "each_run_gflops": [{k: round(v / 1e9, 1) for k, v in run.items()} for run in mm_runs],
              "reference_gflops": round(ref_flops / 1e9, 1),
              "reference": "best jnp.dot fp32 (median of 5 calls, best of before/after the rounds)"}
  result["matmul_fp32"] = matmul

  def summarize(side, extra):
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

  result["ours"] = summarize(ours, {
      "impl": "jax.jit(phi4_jax.train.step.train_step, donate_argnums=0)",
      "loss_chunk": args.loss_chunk, "loss_impl": args.loss_impl,
      "attention": args.attention if args.attention == "xla" else f"{args.attention}/{args.attn_block}",
      "accumulate": args.accumulate,
      "remat_policy": cfg.remat_policy, "scan_layers": cfg.scan_layers,
      "matmul_precision": args.matmul_precision or "default", "compile_s": round(compile_s, 1),
      "variant_check_max_rel_err": check_err})
  if torch_state:
    result["torch"] = summarize(torch_state, {
        "impl": "transformers.Phi3ForCausalLM sdpa + torch.optim.AdamW",
        "attn_implementation": tmodel.config._attn_implementation,
        "adamw_foreach": args.torch_foreach})
    ratio = result["ours"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
    result["ratio_ours_over_torch_tokens_per_s"] = round(ratio, 3)
    # load-robust secondary figure: process CPU seconds per step (both sides use every core)
    result["ratio_by_process_cpu_time"] = round(
        result["torch"]["process_cpu_s_median"] / result["ours"]["process_cpu_s_median"], 3)
  else:
    ratio = None
    result["ratio_ours_over_torch_tokens_per_s"] = None
  frac = result["ours"]["fraction_of_matmul_flops"]
  result["targets"] = {
      "ratio_ge_1.5": None if ratio is None else bool(ratio >= 1.5),
      "fraction_of_matmul_ge_0.55": None if frac is None else bool(frac >= 0.55),
  }

  import torch as _torch  # noqa: F811 (versions/threads; torch is a test dependency)
  import transformers as _tf
  result["env"] = {
      "device": str(jax.devices()[0]), "backend": jax.default_backend(), "cpu": cpu_model(),
      "cpu_count": os.cpu_count(),
      "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "python": platform.python_version(), "jax": jax.__version__,
      "jaxlib": __import__("jaxlib").__version__, "flax": __import__("flax").__version__,
      "optax": __import__("optax").__version__, "torch": _torch.__version__,
      "transformers": _tf.__version__,
      "torch_threads": _torch.get_num_threads(), "torch_interop_threads": _torch.get_num_interop_threads(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "xla_cpu_threads": "XLA default (one per core)",
      "load_avg_start": load_start, "load_avg_end": loadavg(),
  }
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()

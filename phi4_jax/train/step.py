"""Pure functions: next-token loss (chunked over the sequence), gradients, one optimizer step.

A batch is a dict of int32 [B, T] arrays: tokens, segment_ids, positions, loss_mask, source_ids.
Position t predicts token t+1 when both lie in the same (non-padding) segment and loss_mask[t+1]
(all ones in pretraining, the assistant turns in SFT).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from phi4_jax import model as model_lib
from phi4_jax.model import ModelConfig
from phi4_jax.model.output import (chunk_logits, chunk_size, join_chunks, logprob_grads, next_token_targets,
                                   split_chunks)


def _fused_forward(hidden_BxTxD, kernel_DxV, targets_BxT, weights_BxT, chunk, dtype):
  """(sum of weights x nll, nll [B,T]) and, computed on the way, their gradients."""
  chunk = chunk_size(hidden_BxTxD.shape[1], chunk)
  kernel = kernel_DxV.astype(dtype)

  def one_chunk(dkernel_DxV, xs):
    h_BxCxD, y_BxC, w_BxC = xs
    logits_BxCxV = chunk_logits(h_BxCxD, kernel, dtype)
    m = logits_BxCxV.max(axis=-1, keepdims=True)
    e = jnp.exp(logits_BxCxV - m)
    z = e.sum(axis=-1)
    target_logit = jnp.take_along_axis(logits_BxCxV, y_BxC[..., None], axis=-1)[..., 0]
    nll_BxC = jnp.log(z) + m[..., 0] - target_logit
    # nll = -log p: its gradients are those of sum(g * log p) with g = -weight.
    dh_BxCxD, dk_DxV = logprob_grads(h_BxCxD, kernel, e, z, y_BxC, -w_BxC, dtype)
    return dkernel_DxV + dk_DxV, (nll_BxC, dh_BxCxD)

  xs = (split_chunks(hidden_BxTxD, chunk), split_chunks(targets_BxT, chunk), split_chunks(weights_BxT, chunk))
  dkernel_DxV, (nll_NxBxC, dh_NxBxCxD) = jax.lax.scan(
      one_chunk, jnp.zeros(kernel_DxV.shape, jnp.float32), xs)
  nll_BxT = join_chunks(nll_NxBxC)
  grads = (join_chunks(dh_NxBxCxD).astype(hidden_BxTxD.dtype), dkernel_DxV.astype(kernel_DxV.dtype))
  return (jnp.sum(nll_BxT * weights_BxT), nll_BxT), grads


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_cross_entropy(hidden_BxTxD: jax.Array, kernel_DxV: jax.Array, targets_BxT: jax.Array,
                        weights_BxT: jax.Array, chunk: int, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """The output layer and cross-entropy fused: (sum of weights x nll, per-token nll [B,T] fp32).

  Logits live one sequence chunk at a time ([B, chunk, V], never [B, T, V]), and each chunk's
  gradients with respect to hidden and kernel are computed in the forward pass, so the backward
  pass only scales them: three output-layer matmuls per chunk instead of four, and no logits are
  recomputed or kept. Only the summed loss is differentiable; nll is for metrics.
  """
  return _fused_forward(hidden_BxTxD, kernel_DxV, targets_BxT, weights_BxT, chunk, dtype)[0]


def _fused_backward(chunk, dtype, residuals, cotangents):
  (dhidden, dkernel), targets, weights = residuals
  g_loss, _ = cotangents
  return (g_loss.astype(dhidden.dtype) * dhidden, g_loss.astype(dkernel.dtype) * dkernel,
          np.zeros(targets.shape, jax.dtypes.float0), jnp.zeros_like(weights))


def _fused_forward_with_residuals(hidden, kernel, targets, weights, chunk, dtype):
  out, grads = _fused_forward(hidden, kernel, targets, weights, chunk, dtype)
  return out, (grads, targets, weights)


fused_cross_entropy.defvjp(_fused_forward_with_residuals, _fused_backward)


def lm_loss_sums(params: dict, batch: dict, extras: dict | None = None, *, cfg: ModelConfig,
                 num_sources: int, loss_chunk: int, mesh: Any = None) -> tuple[jax.Array, dict]:
  """Summed next-token loss over the target tokens, and sums for metrics (per source included);
  sums["denominator"] is the target-token count the train step divides by."""
  hidden = model_lib.forward(params, batch["tokens"], cfg, segment_ids=batch["segment_ids"],
                             positions=batch["positions"], mesh=mesh, return_hidden=True)
  targets, weights, sources = next_token_targets(batch)
  loss_sum, nll_BxT = fused_cross_entropy(hidden, params["lm_head"]["kernel"], targets, weights,
                                          loss_chunk, jnp.dtype(cfg.dtype))
  onehot_BxTxS = jax.nn.one_hot(sources, num_sources, dtype=jnp.float32) * weights[..., None]
  sums = {
      "loss_sum": loss_sum,
      "denominator": weights.sum(),
      "source_loss_sum": jnp.einsum("bt,bts->s", nll_BxT, onehot_BxTxS),
      "source_tokens": onehot_BxTxS.sum(axis=(0, 1)),
  }
  return sums["loss_sum"], sums


def train_step(state: dict, batch_MxBxT: dict, extras: dict | None = None, *,
               optimizer: optax.GradientTransformation, loss_fn) -> tuple[dict, dict]:
  """One optimizer step over M microbatches (leading axis): gradients of the mean loss.

  loss_fn(params, batch, extras) -> (loss_sum, sums) is an objective's (train/objectives.py);
  extras are frozen inputs (DPO's reference params). Gradients of summed losses are accumulated in
  fp32 and divided by the total sums["denominator"] at the end, so M microbatches give the same
  update as one batch of M times the size. With M = 1 the gradients come straight from jax.grad
  (no accumulator copy of the params).
  """
  params = state["params"]
  grad_fn = jax.grad(loss_fn, has_aux=True)
  to_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  grads_and_sums = lambda mb: to_f32(grad_fn(params, mb, extras))
  first = jax.tree.map(lambda x: x[0], batch_MxBxT)
  if jax.tree.leaves(batch_MxBxT)[0].shape[0] == 1:
    grads, sums = grads_and_sums(first)
  else:
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), jax.eval_shape(grads_and_sums, first))
    (grads, sums), _ = jax.lax.scan(lambda acc, mb: (jax.tree.map(jnp.add, acc, grads_and_sums(mb)), None),
                                    zeros, batch_MxBxT)
  denom = jnp.maximum(sums["denominator"], 1.0)
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
  updates, opt_state = optimizer.update(grads, state["opt_state"], params)
  new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
               "step": state["step"] + 1}
  return new_state, {"loss": sums["loss_sum"] / denom, "grad_norm": optax.tree.norm(grads), **sums}

"""Pure functions: next-token loss (chunked over the sequence), gradients, one optimizer step.

A batch is a dict of int32 [B, T] arrays: tokens, segment_ids, positions, loss_mask, source_ids.
Position t predicts token t+1 when both lie in the same (non-padding) segment and loss_mask[t+1].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from phi4_jax import model as model_lib
from phi4_jax.model import ModelConfig


def next_token_targets(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(targets [B,T], weights [B,T] float32, target source ids [B,T]) aligned to the inputs."""
  tokens, seg = batch["tokens"], batch["segment_ids"]
  shift = lambda x, fill: jnp.concatenate([x[:, 1:], jnp.full_like(x[:, :1], fill)], axis=1)
  next_seg = shift(seg, 0)
  weights = (next_seg == seg) & (next_seg > 0) & (shift(batch["loss_mask"], 0) > 0)
  return shift(tokens, 0), weights.astype(jnp.float32), shift(batch["source_ids"], -1)


def chunked_cross_entropy(hidden_BxTxD: jax.Array, kernel_DxV: jax.Array, targets_BxT: jax.Array,
                          chunk: int, dtype: Any) -> jax.Array:
  """Per-token -log p(target) [B,T] in fp32, never holding more than [B, chunk, V] logits.

  Each chunk's logits are recomputed in the backward pass (jax.checkpoint), so the 100K-wide output
  layer costs memory for one chunk instead of the whole sequence.
  """
  b, t, d = hidden_BxTxD.shape
  chunk = t if chunk <= 0 or t % chunk else chunk
  h_NxBxCxD = hidden_BxTxD.reshape(b, t // chunk, chunk, d).swapaxes(0, 1)
  y_NxBxC = targets_BxT.reshape(b, t // chunk, chunk).swapaxes(0, 1)
  kernel = kernel_DxV.astype(dtype)

  @jax.checkpoint
  def one_chunk(h_BxCxD, y_BxC):
    logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD.astype(dtype), kernel,
                              preferred_element_type=jnp.float32)
    target_logit = jnp.take_along_axis(logits_BxCxV, y_BxC[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BxCxV, axis=-1) - target_logit

  nll_NxBxC = jax.lax.map(lambda xs: one_chunk(*xs), (h_NxBxCxD, y_NxBxC))
  return nll_NxBxC.swapaxes(0, 1).reshape(b, t)


def loss_sums(params: dict, batch: dict, cfg: ModelConfig, num_sources: int, loss_chunk: int,
              mesh: Any = None) -> tuple[jax.Array, dict]:
  """Summed loss over target tokens, and sums for metrics (per source included)."""
  hidden = model_lib.forward(params, batch["tokens"], cfg, segment_ids=batch["segment_ids"],
                             positions=batch["positions"], mesh=mesh, return_hidden=True)
  targets, weights, sources = next_token_targets(batch)
  nll_BxT = chunked_cross_entropy(hidden, params["lm_head"]["kernel"], targets, loss_chunk,
                                  jnp.dtype(cfg.dtype))
  weighted = nll_BxT * weights
  onehot_BxTxS = jax.nn.one_hot(sources, num_sources, dtype=jnp.float32) * weights[..., None]
  sums = {
      "loss_sum": weighted.sum(),
      "tokens": weights.sum(),
      "source_loss_sum": jnp.einsum("bt,bts->s", nll_BxT, onehot_BxTxS),
      "source_tokens": onehot_BxTxS.sum(axis=(0, 1)),
  }
  return sums["loss_sum"], sums


def train_step(state: dict, batch_MxBxT: dict, *, optimizer: optax.GradientTransformation,
               cfg: ModelConfig, num_sources: int, loss_chunk: int, mesh: Any = None) -> tuple[dict, dict]:
  """One optimizer step over M microbatches (leading axis): gradients of the token-mean loss.

  Gradients of summed losses are accumulated in fp32 and divided by the total target-token count
  at the end, so M microbatches give the same update as one batch of M times the size.
  """
  params = state["params"]
  grad_fn = jax.grad(loss_sums, has_aux=True)

  def microbatch(acc, mb):
    grads, sums = grad_fn(params, mb, cfg, num_sources, loss_chunk, mesh)
    return jax.tree.map(jnp.add, acc, (grads, sums)), None

  zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  zero_sums = {"loss_sum": 0.0, "tokens": 0.0, "source_loss_sum": jnp.zeros(num_sources),
               "source_tokens": jnp.zeros(num_sources)}
  zero_sums = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), zero_sums)
  (grads, sums), _ = jax.lax.scan(microbatch, (zero_grads, zero_sums), batch_MxBxT)
  denom = jnp.maximum(sums["tokens"], 1.0)
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
  updates, opt_state = optimizer.update(grads, state["opt_state"], params)
  new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
               "step": state["step"] + 1}
  metrics = {"loss": sums["loss_sum"] / denom, "grad_norm": optax.tree.norm(grads),
             "tokens": sums["tokens"], "source_loss_sum": sums["source_loss_sum"],
             "source_tokens": sums["source_tokens"]}
  return new_state, metrics

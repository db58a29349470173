"""Next-token targets (position t predicts token t+1), and the output layer's log-probability of
given targets, a sequence chunk of logits at a time."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def shift_left(x: jax.Array, fill) -> jax.Array:
  """x[:, t + 1] at position t (fill at the end)."""
  return jnp.concatenate([x[:, 1:], jnp.full_like(x[:, :1], fill)], axis=1)


def target_weights(batch: dict) -> tuple[jax.Array, jax.Array]:
  """(targets [B,T], weights [B,T] float32): position t predicts token t+1 when both lie in the same
  (non-padding) segment and loss_mask marks token t+1."""
  seg = batch["segment_ids"]
  next_seg = shift_left(seg, 0)
  weights = (next_seg == seg) & (next_seg > 0) & (shift_left(batch["loss_mask"], 0) > 0)
  return shift_left(batch["tokens"], 0), weights.astype(jnp.float32)


def next_token_targets(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(targets [B,T], weights [B,T] float32, target source ids [B,T]) aligned to the inputs."""
  targets, weights = target_weights(batch)
  return targets, weights, shift_left(batch["source_ids"], -1)


def per_source(sums: dict, count_key: str, source_names) -> dict[str, float]:
  """{source: mean loss} from a window's summed sums (source_loss_sum over sums[count_key]) for
  each source with a count, named by source_names (the step's source order)."""
  count = np.asarray(sums[count_key])
  loss = np.asarray(sums["source_loss_sum"]) / np.maximum(count, 1)
  return {n: float(loss[i]) for i, n in enumerate(source_names) if count[i] > 0}


def split_chunks(x_BxTx: jax.Array, chunk: int) -> jax.Array:
  """[B, T, ...] -> [T / chunk, B, chunk, ...]."""
  b, t = x_BxTx.shape[:2]
  return x_BxTx.reshape(b, t // chunk, chunk, *x_BxTx.shape[2:]).swapaxes(0, 1)


def join_chunks(x_NxBxCx: jax.Array) -> jax.Array:
  """[T / chunk, B, chunk, ...] -> [B, T, ...]."""
  n, b, c = x_NxBxCx.shape[:3]
  return x_NxBxCx.swapaxes(0, 1).reshape(b, n * c, *x_NxBxCx.shape[3:])


def chunk_size(t: int, chunk: int) -> int:
  """chunk if it divides t (0 < chunk <= t), else t: one chunk."""
  return chunk if 0 < chunk <= t and t % chunk == 0 else t


def chunk_logits(h_BxCxD, kernel_DxV, dtype) -> jax.Array:
  """[B, C, V] float32 logits of one chunk."""
  return jnp.einsum("bcd,dv->bcv", h_BxCxD.astype(dtype), kernel_DxV.astype(dtype),
                    preferred_element_type=jnp.float32)


def _forward(hidden_BxTxD, kernel_DxV, targets_BxT, dtype, chunk):
  """(log-probs [B, T], log-sum-exps [B, T]), both float32."""
  chunk = chunk_size(hidden_BxTxD.shape[1], chunk)

  def one_chunk(_, xs):
    h_BxCxD, y_BxC = xs
    logits_BxCxV = chunk_logits(h_BxCxD, kernel_DxV, dtype)
    lse_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
    target_BxC = jnp.take_along_axis(logits_BxCxV, y_BxC[..., None], axis=-1)[..., 0]
    return None, (target_BxC - lse_BxC, lse_BxC)

  xs = (split_chunks(hidden_BxTxD, chunk), split_chunks(targets_BxT, chunk))
  _, (logp, lse) = jax.lax.scan(one_chunk, None, xs)
  return join_chunks(logp), join_chunks(lse)


def target_scores(hidden_BxTxD, kernel_DxV, targets_BxT, dtype, chunk: int = 256):
  """(log-probs [B, T] float32, is-greedy [B, T] bool: the target is the most likely token), a
  chunk of logits at a time (no gradient: for evaluation)."""
  chunk = chunk_size(hidden_BxTxD.shape[1], chunk)

  def one_chunk(_, xs):
    h_BxCxD, y_BxC = xs
    logits_BxCxV = chunk_logits(h_BxCxD, kernel_DxV, dtype)
    target_BxC = jnp.take_along_axis(logits_BxCxV, y_BxC[..., None], axis=-1)[..., 0]
    greedy_BxC = target_BxC >= logits_BxCxV.max(axis=-1)
    return None, (target_BxC - jax.nn.logsumexp(logits_BxCxV, axis=-1), greedy_BxC)

  xs = (split_chunks(hidden_BxTxD, chunk), split_chunks(targets_BxT, chunk))
  _, (logp, greedy) = jax.lax.scan(one_chunk, None, xs)
  return join_chunks(logp), join_chunks(greedy)


def logprob_grads(h_BxCxD, kernel_DxV, e_BxCxV, z_BxC, y_BxC, g_BxC, dtype):
  """Gradients of sum(g * log softmax(logits)[y]) for one chunk with respect to its hidden states
  and the kernel: (dh [B, C, D], dkernel [D, V]), both float32. The softmax is p = e / z (z = None:
  e is p), and d logits = g * (onehot(y) - p) is formed in one elementwise pass."""
  is_target = jax.lax.broadcasted_iota(jnp.int32, e_BxCxV.shape, 2) == y_BxC[..., None]
  g = g_BxC[..., None]
  scale = g if z_BxC is None else g / z_BxC[..., None]
  dlogits_BxCxV = (jnp.where(is_target, g, 0.0) - e_BxCxV * scale).astype(dtype)
  dh_BxCxD = jnp.einsum("bcv,dv->bcd", dlogits_BxCxV, kernel_DxV.astype(dtype),
                        preferred_element_type=jnp.float32)
  dkernel_DxV = jnp.einsum("bcd,bcv->dv", h_BxCxD.astype(dtype), dlogits_BxCxV,
                           preferred_element_type=jnp.float32)
  return dh_BxCxD, dkernel_DxV


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def target_logprobs(hidden_BxTxD: jax.Array, kernel_DxV: jax.Array, targets_BxT: jax.Array, dtype: Any,
                    chunk: int = 256) -> jax.Array:
  """log softmax(hidden @ kernel)[target], [B, T] float32, never holding [B, T, V] logits.

  Differentiable with a hand-written backward pass: it recomputes one chunk of logits at a time,
  takes their probabilities from the log-sum-exp the forward pass kept ([B, T] floats), and forms
  d logits = g * (onehot(target) - p) in one elementwise pass, so training through it (DPO's
  sequence log-probs) keeps one chunk of logits alive and costs four output-layer matmuls per
  chunk and little else (autodiff of the same forward, rematerialized, adds several passes over
  every chunk of logits for the softmax and gather gradients). Reverse
  mode only: jvp, jacfwd and Hessians through it are not defined.
  """
  return _forward(hidden_BxTxD, kernel_DxV, targets_BxT, dtype, chunk)[0]


def _with_residuals(hidden_BxTxD, kernel_DxV, targets_BxT, dtype, chunk):
  logp, lse = _forward(hidden_BxTxD, kernel_DxV, targets_BxT, dtype, chunk)
  return logp, (hidden_BxTxD, kernel_DxV, targets_BxT, lse)


def _backward(dtype, chunk, residuals, g_BxT):
  hidden_BxTxD, kernel_DxV, targets_BxT, lse_BxT = residuals
  chunk = chunk_size(hidden_BxTxD.shape[1], chunk)
  kernel = kernel_DxV.astype(dtype)

  def one_chunk(dkernel_DxV, xs):
    h_BxCxD, y_BxC, lse_BxC, g_BxC = xs
    logits_BxCxV = chunk_logits(h_BxCxD, kernel, dtype)
    p_BxCxV = jnp.exp(logits_BxCxV - lse_BxC[..., None])
    dh_BxCxD, dk_DxV = logprob_grads(h_BxCxD, kernel, p_BxCxV, None, y_BxC, g_BxC, dtype)
    return dkernel_DxV + dk_DxV, dh_BxCxD

  xs = tuple(split_chunks(x, chunk) for x in (hidden_BxTxD, targets_BxT, lse_BxT, g_BxT.astype(jnp.float32)))
  dkernel_DxV, dh_NxBxCxD = jax.lax.scan(one_chunk, jnp.zeros(kernel_DxV.shape, jnp.float32), xs)
  return (join_chunks(dh_NxBxCxD).astype(hidden_BxTxD.dtype), dkernel_DxV.astype(kernel_DxV.dtype),
          np.zeros(targets_BxT.shape, jax.dtypes.float0))


target_logprobs.defvjp(_with_residuals, _backward)

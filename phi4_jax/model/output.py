"""The output layer's log-probability of given targets, a sequence chunk of logits at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_logprobs(hidden_BxTxD: jax.Array, kernel_DxV: jax.Array, targets_BxT: jax.Array, dtype,
                    chunk: int = 256) -> jax.Array:
  """log softmax(hidden @ kernel)[target], [B, T] float32, never holding [B, T, V] logits.

  Differentiable: each chunk is rematerialized in the backward pass, so training through it (DPO's
  sequence log-probs) keeps one chunk of logits alive, as inference does.
  """
  b, t, d = hidden_BxTxD.shape
  chunk = chunk if 0 < chunk <= t and t % chunk == 0 else t
  h_NxBxCxD = hidden_BxTxD.reshape(b, t // chunk, chunk, d).swapaxes(0, 1)
  y_NxBxC = targets_BxT.reshape(b, t // chunk, chunk).swapaxes(0, 1)
  kernel = kernel_DxV.astype(dtype)

  @jax.checkpoint
  def one_chunk(h_BxCxD, y_BxC):
    logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD.astype(dtype), kernel,
                              preferred_element_type=jnp.float32)
    target = jnp.take_along_axis(logits_BxCxV, y_BxC[..., None], axis=-1)[..., 0]
    return target - jax.nn.logsumexp(logits_BxCxV, axis=-1)

  _, out_NxBxC = jax.lax.scan(lambda _, xs: (None, one_chunk(*xs)), None, (h_NxBxCxD, y_NxBxC))
  return out_NxBxC.swapaxes(0, 1).reshape(b, t)

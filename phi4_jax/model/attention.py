"""Causal grouped-query attention in query blocks, with flash-attention-style gradients.

Query block i (rows [q0, q1)) only looks at keys [0, q1): the fully masked upper-right key blocks
are never computed, stored or differentiated (4 blocks skip 37.5% of the score matrix, 16 skip
47%). The forward pass keeps only the output and each row's log-sum-exp; the backward pass
recomputes a block's probabilities as exp(s - lse) and uses dS = P * (dP - rowsum(dO * O)) instead
of differentiating max/exp/sum/divide. The math is XLA's softmax attention in fp32; on CPU it is
the fastest path we measured (benchmarks/README.md), and it needs no [T, S] score matrix.

Shape letters: B batch, T query length, S key length, H query heads, K kv heads, G = H / K query
heads per kv head, D head_dim, Q rows of a query block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = float(jnp.finfo(jnp.float32).min)
MAX_BLOCKS = 32  # blocks are unrolled in the program: longer rows get proportionally larger blocks


def query_blocks(t: int, block: int) -> list[tuple[int, int]]:
  """[q0, q1) row ranges of `block` rows (at most MAX_BLOCKS of them; one block if t % size)."""
  size = max(block, -(-t // MAX_BLOCKS))
  size = size if 0 < size < t and t % size == 0 else t
  return [(i * size, (i + 1) * size) for i in range(t // size)]


def _allowed(mask_Bx1xTxS, q0: int, q1: int) -> jax.Array:
  """[B or 1, 1, 1, Q, q1]: causal, and within a segment when a mask is given."""
  allowed = (jnp.arange(q0, q1)[:, None] >= jnp.arange(q1)[None, :])[None, None, None]
  if mask_Bx1xTxS is not None:
    allowed = allowed & mask_Bx1xTxS[:, :, None, q0:q1, :q1]
  return allowed


def _split_query_heads(x_BxTxHxD, kv_heads: int):
  b, t, h, d = x_BxTxHxD.shape
  return x_BxTxHxD.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)


def _split_heads(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD):
  q_BxKxGxTxD = _split_query_heads(q_BxTxHxD, k_BxSxKxD.shape[2])
  return q_BxKxGxTxD, k_BxSxKxD.transpose(0, 2, 1, 3), v_BxSxKxD.transpose(0, 2, 1, 3)


def _merge_heads(x_BxKxGxTxD):
  b, k, g, t, d = x_BxKxGxTxD.shape
  return x_BxKxGxTxD.transpose(0, 3, 1, 2, 4).reshape(b, t, k * g, d)


def _forward(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_Bx1xTxS, scale, block):
  q_BxKxGxTxD, k_BxKxSxD, v_BxKxSxD = _split_heads(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD)
  outs, lses = [], []
  for q0, q1 in query_blocks(q_BxTxHxD.shape[1], block):
    s_BxKxGxQxS = jnp.einsum("bkgqd,bksd->bkgqs", q_BxKxGxTxD[:, :, :, q0:q1], k_BxKxSxD[:, :, :q1],
                             preferred_element_type=jnp.float32) * scale
    s_BxKxGxQxS = jnp.where(_allowed(mask_Bx1xTxS, q0, q1), s_BxKxGxQxS, _NEG)
    m = s_BxKxGxQxS.max(axis=-1, keepdims=True)
    e = jnp.exp(s_BxKxGxQxS - m)
    l = e.sum(axis=-1, keepdims=True)
    outs.append(jnp.einsum("bkgqs,bksd->bkgqd", (e / l).astype(v_BxSxKxD.dtype), v_BxKxSxD[:, :, :q1],
                           preferred_element_type=jnp.float32))
    lses.append((m + jnp.log(l))[..., 0])
  o_BxKxGxTxD = jnp.concatenate(outs, axis=3)
  lse_BxKxGxT = jnp.concatenate(lses, axis=3)
  out = _merge_heads(o_BxKxGxTxD).astype(q_BxTxHxD.dtype)
  return out, (q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_Bx1xTxS, o_BxKxGxTxD, lse_BxKxGxT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def blocked_attention(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                      mask_Bx1xTxS: jax.Array | None, scale: float, block: int) -> jax.Array:
  """softmax(q k^T * scale, causal & mask) v for GQA inputs; [B,T,H,D] out, in q's dtype."""
  return _forward(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_Bx1xTxS, scale, block)[0]


def _backward(scale, block, residuals, dout_BxTxHxD):
  q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_Bx1xTxS, o_BxKxGxTxD, lse_BxKxGxT = residuals
  q_BxKxGxTxD, k_BxKxSxD, v_BxKxSxD = _split_heads(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD)
  do_BxKxGxTxD = _split_query_heads(dout_BxTxHxD, k_BxSxKxD.shape[2]).astype(jnp.float32)
  k32_BxKxSxD, v32_BxKxSxD = k_BxKxSxD.astype(jnp.float32), v_BxKxSxD.astype(jnp.float32)
  delta_BxKxGxT = jnp.sum(do_BxKxGxTxD * o_BxKxGxTxD, axis=-1)
  dqs = []
  dk_BxKxSxD = jnp.zeros(k_BxKxSxD.shape, jnp.float32)
  dv_BxKxSxD = jnp.zeros(v_BxKxSxD.shape, jnp.float32)
  for q0, q1 in query_blocks(q_BxTxHxD.shape[1], block):
    q_i, do_i = q_BxKxGxTxD[:, :, :, q0:q1], do_BxKxGxTxD[:, :, :, q0:q1]
    s = jnp.einsum("bkgqd,bksd->bkgqs", q_i, k_BxKxSxD[:, :, :q1],
                   preferred_element_type=jnp.float32) * scale
    p = jnp.where(_allowed(mask_Bx1xTxS, q0, q1), jnp.exp(s - lse_BxKxGxT[..., q0:q1, None]), 0.0)
    dp = jnp.einsum("bkgqd,bksd->bkgqs", do_i, v32_BxKxSxD[:, :, :q1])
    ds = p * (dp - delta_BxKxGxT[..., q0:q1, None]) * scale
    dqs.append(jnp.einsum("bkgqs,bksd->bkgqd", ds, k32_BxKxSxD[:, :, :q1]))
    dk_BxKxSxD = dk_BxKxSxD.at[:, :, :q1].add(jnp.einsum("bkgqs,bkgqd->bksd", ds, q_i.astype(jnp.float32)))
    dv_BxKxSxD = dv_BxKxSxD.at[:, :, :q1].add(jnp.einsum("bkgqs,bkgqd->bksd", p, do_i))
  dq = _merge_heads(jnp.concatenate(dqs, axis=3))
  dmask = None if mask_Bx1xTxS is None else jnp.zeros(mask_Bx1xTxS.shape, jax.dtypes.float0)
  return (dq.astype(q_BxTxHxD.dtype), dk_BxKxSxD.transpose(0, 2, 1, 3).astype(k_BxSxKxD.dtype),
          dv_BxKxSxD.transpose(0, 2, 1, 3).astype(v_BxSxKxD.dtype), dmask)


blocked_attention.defvjp(_forward, _backward)

"""Choosing the next token from logits: greedy, or temperature with optional top-k and top-p.

Every row draws with its own key, folded from the call's seed, the row's global index and the
step, so a row's tokens do not depend on which other rows share its batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampler:
  """The static part of the sampling settings (one compiled decode loop per distinct Sampler)."""

  greedy: bool  # temperature 0: argmax, no randomness
  top_k: int  # keep the k largest logits; 0 = all
  use_top_p: bool  # apply the nucleus cut (top_p < 1)

  @classmethod
  def make(cls, temperature: float, top_k: int, top_p: float) -> "Sampler":
    return cls(greedy=temperature == 0.0, top_k=int(top_k), use_top_p=top_p < 1.0)


def row_keys(seed: int | jax.Array, row_ids_B: jax.Array, step: jax.Array) -> jax.Array:
  """One key per row for this step."""
  base = jax.random.key(seed)
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base, r), step))(row_ids_B)


def filter_logits(logits_BxV: jax.Array, sampler: Sampler, top_p: jax.Array) -> jax.Array:
  """Logits outside the top k, or outside the smallest set holding top_p of the mass, set to -inf."""
  if sampler.top_k:
    kth_B1 = jax.lax.top_k(logits_BxV, sampler.top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
  if sampler.use_top_p:
    logits_BxV = jnp.where(_ordered_bits(logits_BxV) < nucleus_cutoff(logits_BxV, top_p), -jnp.inf, logits_BxV)
  return logits_BxV


def _ordered_bits(x: jax.Array) -> jax.Array:
  """uint32 keys of float32 values in the same order as the values (-0.0 is +0.0; NaN aside)."""
  x = x.astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


NUCLEUS_TOP_K = 64  # the nucleus is looked for among this many largest logits first


def nucleus_cutoff(logits_BxV: jax.Array, top_p: jax.Array) -> jax.Array:
  """uint32 [B, 1]: the ordered key (`_ordered_bits`) of each row's smallest logit inside the nucleus,
  the tokens kept by sorting the logits in descending order and keeping each while the mass before it
  is < top_p (ties with the last one kept are kept), without sorting the vocabulary: when the
  NUCLEUS_TOP_K largest logits of every row hold top_p of its mass, the nucleus is among them (one
  top-k); otherwise by `_bisected_cutoff`."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  top_BxK = jax.lax.top_k(logits_BxV, min(NUCLEUS_TOP_K, logits_BxV.shape[-1]))[0]
  probs_BxK = jnp.exp(top_BxK - jax.nn.logsumexp(logits_BxV, axis=-1, keepdims=True))
  inside = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK < top_p
  cutoff_B1 = _ordered_bits(jnp.min(jnp.where(inside, top_BxK, jnp.inf), axis=-1, keepdims=True))
  covered = jnp.all(jnp.sum(probs_BxK, axis=-1) >= top_p)
  return jax.lax.cond(covered, lambda: cutoff_B1, lambda: _bisected_cutoff(logits_BxV, top_p))


def _bisected_cutoff(logits_BxV: jax.Array, top_p: jax.Array) -> jax.Array:
  """`nucleus_cutoff` for any logits: the nucleus's smallest logit is the smallest value v with
  mass(logits > v) < top_p, found exactly by bisection over the 2^32 keys: 32 masked sums over the
  vocabulary instead of a sort (a sort of 100K logits per row costs about 8x more on CPU)."""
  probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
  keys_BxV = _ordered_bits(logits_BxV)
  # Invariant: mass(keys > lo) >= top_p > mass(keys > hi); at hi = lo + 1, the cutoff is hi.
  lo_B1 = jnp.zeros(keys_BxV.shape[:1] + (1,), jnp.uint32)
  hi_B1 = jnp.max(keys_BxV, axis=-1, keepdims=True)

  def halve(_, bounds):
    lo_B1, hi_B1 = bounds
    mid_B1 = lo_B1 + (hi_B1 - lo_B1) // 2
    below = jnp.sum(jnp.where(keys_BxV > mid_B1, probs_BxV, 0.0), axis=-1, keepdims=True) < top_p
    return jnp.where(below, lo_B1, mid_B1), jnp.where(below, mid_B1, hi_B1)

  return jax.lax.fori_loop(0, 32, halve, (lo_B1, hi_B1))[1]


BLOCK = 1024  # inverse-CDF sampling picks a block of this many tokens by mass, then a token in it


def inverse_cdf(logits_BxV: jax.Array, uniform_B: jax.Array) -> jax.Array:
  """int32 [B]: the token whose cumulative probability interval holds (1 - u) of each row's mass
  (u in [0, 1)): an exact draw from softmax(logits), -inf logits never chosen. Two levels (block
  sums, then one block's prefix sums) so that a row costs one exp pass and one sum over the
  vocabulary instead of a random number per token (JAX's categorical)."""
  B, V = logits_BxV.shape
  nb = -(-V // BLOCK)
  p_BxV = jnp.exp(logits_BxV - jnp.max(logits_BxV, axis=-1, keepdims=True))
  p_BxNxK = jnp.pad(p_BxV, ((0, 0), (0, nb * BLOCK - V))).reshape(B, nb, BLOCK)
  block_cdf_BxN = jnp.cumsum(p_BxNxK.sum(-1), axis=-1)
  target_B = (1.0 - uniform_B) * block_cdf_BxN[:, -1]  # in (0, total]
  block_B = jnp.minimum(jnp.sum(block_cdf_BxN < target_B[:, None], axis=-1), nb - 1)
  before_B = jnp.where(block_B > 0, jnp.take_along_axis(
      block_cdf_BxN, jnp.maximum(block_B - 1, 0)[:, None], axis=1)[:, 0], 0.0)
  inner_BxK = jnp.take_along_axis(p_BxNxK, block_B[:, None, None], axis=1)[:, 0]
  cdf_BxK = jnp.cumsum(inner_BxK, axis=-1) + before_B[:, None]
  last_B = BLOCK - 1 - jnp.argmax((inner_BxK > 0)[:, ::-1], axis=-1)  # (rounding never picks p = 0)
  index_B = jnp.minimum(jnp.sum(cdf_BxK < target_B[:, None], axis=-1), last_B)
  return (block_B * BLOCK + index_B).astype(jnp.int32)


def argmax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """int32: jnp.argmax of 2-D logits over `axis` (the vocabulary: -1 for [B, V], 0 for [V, B]; the
  first maximum; a row with NaN logits gets one of its indices, unspecified), in two levels: the
  first block of BLOCK tokens holding the maximum, then the first maximum inside it. XLA:CPU's
  argmax (a reduction over (value, index) pairs) is not vectorized, and over a 100K vocabulary it
  costs a large part of a decode step; a block max is a plain vectorized max."""
  axis %= logits.ndim
  v = logits.shape[axis]
  if v <= BLOCK:
    return jnp.argmax(logits, axis=axis).astype(jnp.int32)
  nb = -(-v // BLOCK)
  padding = [(0, 0)] * logits.ndim
  padding[axis] = (0, nb * BLOCK - v)
  blocks = jnp.pad(logits, padding, constant_values=-jnp.inf)
  blocks = blocks.reshape(*logits.shape[:axis], nb, BLOCK, *logits.shape[axis + 1:])
  block = jnp.argmax(jnp.max(blocks, axis=axis + 1), axis=axis)
  inner = jnp.take_along_axis(blocks, jnp.expand_dims(block, (axis, axis + 1)), axis=axis)
  return (block * BLOCK + jnp.argmax(inner.squeeze(axis), axis=axis)).astype(jnp.int32)


def sample(logits_BxV: jax.Array, keys_B: jax.Array, sampler: Sampler, temperature: jax.Array,
           top_p: jax.Array) -> jax.Array:
  """int32 [B]: the next token of every row."""
  if sampler.greedy:
    return argmax(logits_BxV)
  logits_BxV = filter_logits(logits_BxV / temperature, sampler, top_p)
  uniform_B = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(keys_B)
  return inverse_cdf(logits_BxV.astype(jnp.float32), uniform_B)

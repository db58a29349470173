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
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    # The smallest logit still inside the nucleus: tokens are kept while the mass before them < p.
    inside = mass_before_BxV < top_p
    cutoff_B1 = jnp.min(jnp.where(inside, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_B1, -jnp.inf, logits_BxV)
  return logits_BxV


def sample(logits_BxV: jax.Array, keys_B: jax.Array, sampler: Sampler, temperature: jax.Array,
           top_p: jax.Array) -> jax.Array:
  """int32 [B]: the next token of every row."""
  if sampler.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = filter_logits(logits_BxV / temperature, sampler, top_p)
  return jax.vmap(jax.random.categorical)(keys_B, logits_BxV).astype(jnp.int32)

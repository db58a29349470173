"""Choosing each row's next token with the row's own settings, as arrays (one compiled step for any mix).

inference.sampling.sample takes the sampling settings as static (one compile per Sampler); the
server's rows each carry their own temperature, top_k, top_p, seed and sample index, so here they
are [B] arrays: a row with temperature 0 takes the argmax, the others draw by inverse CDF from keys
folded exactly as sampling.row_keys folds them (seed, then the row's sample index, then the step).
A row's draws therefore equal inference.generate's for the same prompt, seed and sample index, and
do not depend on its neighbours. `filtered` (static) adds the per-row top-k / top-p cut, which
sorts the vocabulary: batches without a cut skip it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phi4_jax.inference import sampling

TOP_LOGPROBS = 20  # alternatives computed when any row asks for logprobs (OpenAI's largest top_logprobs)


def row_keys(seed_B: jax.Array, sample_B: jax.Array, step_B: jax.Array) -> jax.Array:
  """One key per row: sampling.row_keys(seed, [sample], step) of each row's own seed and step."""
  fold = lambda seed, row, step: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), row), step)
  return jax.vmap(fold)(seed_B, sample_B, step_B)


def _filter_rows(logits_BxV: jax.Array, top_k_B: jax.Array, top_p_B: jax.Array) -> jax.Array:
  """sampling.filter_logits with each row's own k (0: no cut) and p (1: no cut)."""
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  kth_B1 = jnp.take_along_axis(sorted_BxV, jnp.maximum(top_k_B - 1, 0)[:, None], axis=1)
  kth_B1 = jnp.where(top_k_B[:, None] > 0, kth_B1, -jnp.inf)
  logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
  sorted_BxV = jnp.where(sorted_BxV < kth_B1, -jnp.inf, sorted_BxV)  # (the top-k cut, still sorted)
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  inside = mass_before_BxV < top_p_B[:, None]
  cutoff_B1 = jnp.min(jnp.where(inside, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  cutoff_B1 = jnp.where(top_p_B[:, None] < 1.0, cutoff_B1, -jnp.inf)
  return jnp.where(logits_BxV < cutoff_B1, -jnp.inf, logits_BxV)


def choose(logits_BxV: jax.Array, keys_B: jax.Array, temperature_B: jax.Array, top_k_B: jax.Array,
           top_p_B: jax.Array, *, filtered: bool) -> jax.Array:
  """int32 [B]: the argmax where temperature is 0, else a draw from the row's filtered softmax."""
  greedy_B = sampling.argmax(logits_BxV)
  scaled_BxV = logits_BxV / jnp.where(temperature_B > 0, temperature_B, 1.0)[:, None]
  if filtered:
    scaled_BxV = _filter_rows(scaled_BxV, top_k_B, top_p_B)
  uniform_B = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(keys_B)
  drawn_B = sampling.inverse_cdf(scaled_BxV.astype(jnp.float32), uniform_B)
  return jnp.where(temperature_B > 0, drawn_B, greedy_B)


def token_logprobs(logits_BxV: jax.Array, tokens_B: jax.Array, k: int) -> tuple:
  """(log-prob [B] of each chosen token, top-k log-probs [B, k], their ids [B, k]) of the model's
  distribution (the logits' log-softmax, before temperature and cuts, as vLLM reports them)."""
  logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
  chosen_B = jnp.take_along_axis(logp_BxV, tokens_B[:, None], axis=1)[:, 0]
  top_BxK, ids_BxK = jax.lax.top_k(logp_BxV, k)
  return chosen_B, top_BxK, ids_BxK.astype(jnp.int32)

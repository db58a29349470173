"""The engine's two compiled calls over one KV cache of [slots, cache_len] rows per layer.

  admit:   prefill a group of prompts (left-padded to one power-of-two length P, as
           inference.generate pads them), draw each joining row's first token, and write the
           prompts' cache columns [0, P) into the rows' slots (a prompt's n samples share its
           prefill: its cache is written into n slots)
  decode:  `chunk` steps of the first `rows` slots at once (the engine passes the power of two
           holding every busy slot), each slot at its own cache column, position and padding
           (decoder.step with per-row slots), each row sampling with its own settings (choose.py)

Each slot's layout is the one inference.generate gives its row alone: the prompt in columns
[pad, P), generated token i fed at column P + i; a slot that finished early keeps computing until
the host frees it (its writes stay in its own row, clipped to the last column). The sampler's
settings are arrays, so a mix of greedy and sampling rows shares one compiled step; the static
variants are `filtered` (some row cuts top-k / top-p) and `top_k_logprobs` (some row wants logprobs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from phi4_jax.inference import batching, decoder
from phi4_jax.serve import choose


def _constrain(cache: tuple, sharding) -> tuple:
  return cache if sharding is None else jax.lax.with_sharding_constraint(cache, sharding)


def _pick(params, cfg, x_BxD, seed_B, sample_B, step_B, temp_B, top_k_B, top_p_B, filtered, k):
  """(tokens [B], (chosen log-probs [B], top log-probs [B, k], top ids [B, k]) or None)."""
  logits_BxV = decoder.logits(params, cfg, x_BxD)
  keys_B = choose.row_keys(seed_B, sample_B, step_B)
  tokens_B = choose.choose(logits_BxV, keys_B, temp_B, top_k_B, top_p_B, filtered=filtered)
  return tokens_B, (choose.token_logprobs(logits_BxV, tokens_B, k) if k else None)


@functools.partial(jax.jit, static_argnames=("cfg", "filtered", "k", "sharding"), donate_argnames=("cache",))
def admit(params, cache, tokens_GxP, pad_G, src_R, slot_R, seed_R, sample_R, temp_R, top_k_R, top_p_R, *,
          cfg, filtered, k, sharding):
  """Prefills G prompts; row r of R joins slot slot_R[r] (out of range: a padding row, dropped) with
  prompt src_R[r]. Returns (first tokens [R], their logprobs or None, the cache)."""
  batching.note_compile("serve_admit")
  x_GxD, prompt_cache = decoder.prefill(params, cfg, tokens_GxP, pad_G, tokens_GxP.shape[1])
  step_R = jnp.zeros_like(slot_R)
  first_R, lps = _pick(params, cfg, x_GxD[src_R], seed_R, sample_R, step_R, temp_R, top_k_R, top_p_R,
                       filtered, k)
  p = tokens_GxP.shape[1]
  write = lambda rows, new: rows.at[slot_R, :, :p].set(new[src_R].astype(rows.dtype), mode="drop")
  cache = tuple({name: write(layer[name], new[name]) for name in ("k", "v")}
                for layer, new in zip(cache, prompt_cache))
  return first_R, lps, _constrain(cache, sharding)


@functools.partial(jax.jit, static_argnames=("cfg", "chunk", "filtered", "k", "sharding"),
                   donate_argnames=("cache",))
def decode(params, cache, token_B, column_B, pad_B, position_B, step_B, seed_B, sample_B, temp_B, top_k_B,
           top_p_B, *, cfg, chunk, filtered, k, sharding):
  """`chunk` tokens of the first B slots (B = len(token_B) <= the cache's slots; the other slots'
  rows are left as they are): token_B is fed at column_B (its position position_B) and the next one
  drawn as step step_B. Returns (tokens [B, chunk], logprobs or None, the cache)."""
  batching.note_compile("serve_decode")
  rows = token_B.shape[0]
  whole, cache = cache, tuple({name: layer[name][:rows] for name in ("k", "v")} for layer in cache)
  last = cache[0]["k"].shape[2] - 1

  def one(carry, i):
    cache, token_B = carry
    column = jnp.minimum(column_B + i, last)
    x_BxD, cache = decoder.step(params, cfg, cache, token_B, position_B + i, column, pad_B)
    token_B, lps = _pick(params, cfg, x_BxD, seed_B, sample_B, step_B + i, temp_B, top_k_B, top_p_B,
                         filtered, k)
    return (_constrain(cache, sharding), token_B), (token_B, lps)

  (cache, _), (tokens_CxB, lps) = jax.lax.scan(one, (cache, token_B), jnp.arange(chunk))
  lps = None if lps is None else jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), lps)
  cache = tuple({name: jax.lax.dynamic_update_slice_in_dim(full[name], part[name], 0, axis=0)
                 for name in ("k", "v")} for full, part in zip(whole, cache))
  return tokens_CxB.T, lps, _constrain(cache, sharding)

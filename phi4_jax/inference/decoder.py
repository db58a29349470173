"""The decoder over a KV cache: prefill a left-padded prompt batch, then one token per step.

Pure functions of the params tree that `model.init` makes, with its layers split by
`split_layers` into one tree per layer (k/v and gate/up joined); the math is the model's own
(`model.layers`: rms_norm, rope_cos_sin, apply_rope), with attention reading cache slots instead
of the whole sequence. The layers are unrolled, each reading its own weights and cache: on CPU, a
scan over the stacked layers copies every layer's weights out of the stack at every decode step,
which cost 10% of a batch-16 step and 25% of a batch-1 step of the decode benchmark's model.

Cache: one {"k", "v"} per layer, each [B, K, S, Dh] in the compute dtype: heads before slots, so
that attention's batch dimensions (row, kv head) lead and XLA copies no cache to transpose them (in
the [B, S, K, Dh] layout that copy was a third of a 64-row decode step: see `_attend`). Row b's
prompt fills slots [pad_b, P) of the prompt bucket P (left padding), its generated tokens slots P,
P+1, ...; RoPE positions count from the row's first real token, so padding changes nothing. A
query attends to the slots from pad_b up to its own.
"""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp

from phi4_jax.inference import sampling
from phi4_jax.model import ModelConfig
from phi4_jax.model.layers import apply_rope, rms_norm, rope_cos_sin

_MASKED = -1e30  # finite, so a row with nothing to attend to (batch padding) stays NaN-free


def _dtype(cfg: ModelConfig):
  return jnp.dtype(cfg.dtype)


def _embed(params: dict, tokens_BxT: jax.Array, cfg: ModelConfig) -> jax.Array:
  return jnp.take(params["embed"]["embedding"].astype(_dtype(cfg)), tokens_BxT, axis=0)


def _qkv(cfg: ModelConfig, lp: dict, x_BxTxD, cos_BxTxDh, sin_BxTxDh):
  """Normed input -> (q [B,T,H,Dh], k [B,K,T,Dh], v [B,K,T,Dh]) with RoPE applied to q and k; k and v
  in the cache's layout."""
  dt = _dtype(cfg)
  h_BxTxD = rms_norm(x_BxTxD, lp["attn_norm"]["scale"], cfg.norm_eps).astype(dt)
  q = jnp.einsum("btd,dnk->btnk", h_BxTxD, lp["q"].astype(dt))
  kv_BxTx2xKxDh = jnp.einsum("btd,dsnk->btsnk", h_BxTxD, lp["kv"].astype(dt))
  k_BxTxKxDh, v_BxTxKxDh = kv_BxTx2xKxDh[:, :, 0], kv_BxTx2xKxDh[:, :, 1]
  heads_first = lambda a: a.transpose(0, 2, 1, 3)
  return (apply_rope(q, cos_BxTxDh, sin_BxTxDh), heads_first(apply_rope(k_BxTxKxDh, cos_BxTxDh, sin_BxTxDh)),
          heads_first(v_BxTxKxDh))


def _attend(q_BxTxHxDh, k_BxKxSxDh, v_BxKxSxDh, mask_BxTxS, scale: float) -> jax.Array:
  """Grouped-query attention (query head h reads kv head h // (H / K)), softmax in fp32.

  One query per row (a decode step) on CPU: the probabilities times values as a product and a sum
  over slots, not a dot (XLA:CPU runs that batched dot per (row, head) through Eigen). This and
  the cache layout together, timed on the layers of a decode step of the decode benchmark's model
  (8 layers, 256 cache slots), ms per step: 64 rows 57 -> 39, 16 rows 16.5 -> 13.8, one row 6.0 ->
  5.2."""
  b, t, h, d = q_BxTxHxDh.shape
  kv, s = k_BxKxSxDh.shape[1:3]
  q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, kv, h // kv, d)
  scores = jnp.einsum("btkgd,bksd->bkgts", q_BxTxKxGxDh, k_BxKxSxDh,
                      preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask_BxTxS[:, None, None], scores, _MASKED)
  probs_BxKxGxTxS = jax.nn.softmax(scores, axis=-1)
  if t == 1 and jax.default_backend() == "cpu":  # (products in fp32: a bf16 cache loses no more)
    products = probs_BxKxGxTxS.reshape(b, kv, h // kv, s, 1) * v_BxKxSxDh[:, :, None].astype(jnp.float32)
    return jnp.sum(products, axis=3).astype(v_BxKxSxDh.dtype).reshape(b, 1, h, d)
  return jnp.einsum("bkgts,bksd->btkgd", probs_BxKxGxTxS.astype(v_BxKxSxDh.dtype),
                    v_BxKxSxDh).reshape(b, t, h, d)


def _finish(cfg: ModelConfig, lp: dict, x_BxTxD, attn_BxTxHxDh) -> jax.Array:
  """The rest of the block: output projection and residual, then the SwiGLU MLP and residual."""
  dt = _dtype(cfg)
  x_BxTxD = x_BxTxD + jnp.einsum("bthk,hkd->btd", attn_BxTxHxDh, lp["o"].astype(dt))
  h_BxTxD = rms_norm(x_BxTxD, lp["mlp_norm"]["scale"], cfg.norm_eps).astype(dt)
  gate_up_BxTx2xF = jnp.einsum("btd,dsf->btsf", h_BxTxD, lp["gate_up"].astype(dt))
  hidden_BxTxF = jax.nn.silu(gate_up_BxTx2xF[:, :, 0]) * gate_up_BxTx2xF[:, :, 1]
  if "down_DxF" in lp and x_BxTxD.shape[0] * x_BxTxD.shape[1] == 1:
    return x_BxTxD + jnp.einsum("btf,df->btd", hidden_BxTxF, lp["down_DxF"].astype(dt))
  return x_BxTxD + jnp.einsum("btf,fd->btd", hidden_BxTxF, lp["down"].astype(dt))


def _final_norm(params: dict, cfg: ModelConfig, x_BxD) -> jax.Array:
  return rms_norm(x_BxD, params["final_norm"]["scale"], cfg.norm_eps).astype(_dtype(cfg))


def logits(params: dict, cfg: ModelConfig, x_BxD) -> jax.Array:
  """The final norm and output layer of one position per row: [B, V] float32."""
  return jnp.einsum("bd,dv->bv", _final_norm(params, cfg, x_BxD),
                    params["lm_head"]["kernel"].astype(_dtype(cfg)), preferred_element_type=jnp.float32)


def _greedy_columns(params: dict, cfg: ModelConfig, x_BxD) -> jax.Array:
  """int32 [B]: the argmax of each row's logits, made as [V, B] from the [V, D] output kernel."""
  logits_VxB = jnp.einsum("bd,vd->vb", _final_norm(params, cfg, x_BxD),
                          params["lm_head_VxD"].astype(_dtype(cfg)), preferred_element_type=jnp.float32)
  return sampling.argmax(logits_VxB, axis=0)


def next_tokens(params: dict, cfg: ModelConfig, x_BxD, choose, *, greedy: bool = False) -> jax.Array:
  """int32 [B]: choose(logits [b, V], rows) of the rows' hidden states, where rows = arange(B)[chunk].

  On CPU, more than LOGIT_ROWS rows go through the output layer and `choose` LOGIT_ROWS at a time
  (a sequential lax.map), so each chunk's logits are still in cache when they are sampled (the
  same tokens as one chunk, faster: benchmarks/README.md). Elsewhere one chunk.

  greedy: `choose` is the argmax. On CPU, chunks of several rows then take it from logits made as
  [V, B] with split_layers' "lm_head_VxD" (XLA:CPU's matmul streams a [V, D] left operand past a few
  columns faster than it streams [B, D] rows past the [D, V] kernel), down the columns.
  """
  b = x_BxD.shape[0]
  rows_B = jnp.arange(b)
  columns = greedy and "lm_head_VxD" in params and b > 1  # (chunks hold min(b, LOGIT_ROWS) rows)
  pick = ((lambda x, rows: _greedy_columns(params, cfg, x)) if columns else
          (lambda x, rows: choose(logits(params, cfg, x), rows)))
  if jax.default_backend() != "cpu" or b <= LOGIT_ROWS or b % LOGIT_ROWS:
    return pick(x_BxD, rows_B)
  chunks = lambda a: a.reshape(b // LOGIT_ROWS, LOGIT_ROWS, *a.shape[1:])
  return jax.lax.map(lambda xr: pick(*xr), (chunks(x_BxD), chunks(rows_B))).reshape(b)


def split_layers(params: dict) -> dict:
  """params with "layers" as a tuple of decoding layers (one tree per layer, k/v and gate/up joined)
  instead of arrays stacked on axis 0, and, on CPU, each layer's "down_DxF": a transposed copy read
  by a single row (its [1, F] x [F, D] product is faster from the transposed copy; at 16 rows it is
  not, so they keep the kernel) and the output kernel's [V, D] copy "lm_head_VxD" for greedy
  chunks of several rows (next_tokens). The weights are copied once: the copy is kept for the same
  arrays (a PTS run calls generate thousands of times) until one of them is freed or
  clear_split_cache() is called. split_layers output is returned as it is."""
  if isinstance(params["layers"], (tuple, list)):
    return params
  leaves, structure = jax.tree.flatten(params)
  if _last_split and _last_split[0] == structure and all(
      ref() is leaf for ref, leaf in zip(_last_split[1], leaves)):
    return _last_split[2]
  split = {**params, "layers": _split_stack(params["layers"])}
  if jax.default_backend() == "cpu":
    split["lm_head_VxD"] = _transposed(params["lm_head"]["kernel"])
  _last_split[:] = [structure, [weakref.ref(leaf, lambda _: clear_split_cache()) for leaf in leaves], split]
  return split


def clear_split_cache() -> None:
  """Drops the kept split_layers copy."""
  _last_split.clear()


LOGIT_ROWS = 64  # rows per output-layer + sampling chunk on CPU (next_tokens)
_last_split: list = []  # [tree structure, weakrefs of the arrays last split, their split params]


_transposed = jax.jit(jnp.transpose)


@jax.jit
def _split_stack(layers: dict) -> tuple:
  n = jax.tree.leaves(layers)[0].shape[0]
  return tuple(_decoding_layer(jax.tree.map(lambda w, i=i: w[i], layers)) for i in range(n))


def _decoding_layer(lp: dict) -> dict:
  """One layer's params with k/v and gate/up each stacked into one matmul (fewer matmuls per decode
  step: at batch 1 each is a matrix-vector product). They are stacked on a new axis, not
  concatenated, so tensor-parallel shards of heads and mlp stay where they are. On CPU also
  "down_DxF" (see split_layers)."""
  attn, mlp = lp["attn"], lp["mlp"]
  layer = {"attn_norm": lp["attn_norm"], "mlp_norm": lp["mlp_norm"], "q": attn["q"]["kernel"],
           "kv": jnp.stack([attn["k"]["kernel"], attn["v"]["kernel"]], axis=1), "o": attn["o"]["kernel"],
           "gate_up": jnp.stack([mlp["gate"]["kernel"], mlp["up"]["kernel"]], axis=1),
           "down": mlp["down"]["kernel"]}
  if jax.default_backend() == "cpu":
    layer["down_DxF"] = mlp["down"]["kernel"].T
  return layer


def _check_split(params: dict) -> None:
  if not isinstance(params["layers"], (tuple, list)):
    raise TypeError("decoder.prefill/step take decoder.split_layers(params), not model.init's "
                    "stacked params")


def prefill(params: dict, cfg: ModelConfig, tokens_BxP: jax.Array, pad_B: jax.Array,
            cache_len: int) -> tuple[jax.Array, tuple]:
  """(hidden state [B, D] of each row's last prompt token, before the final norm: `logits` takes
  it; a cache of cache_len slots holding the prompt)."""
  _check_split(params)
  p = tokens_BxP.shape[1]
  slots = jnp.arange(p)
  positions_BxP = jnp.maximum(slots[None] - pad_B[:, None], 0)
  cos, sin = rope_cos_sin(positions_BxP, cfg.head_dim, cfg.rope_theta)
  mask_BxPxP = (slots[None, None, :] <= slots[None, :, None]) & (slots[None, None, :] >= pad_B[:, None, None])
  grow = ((0, 0), (0, 0), (0, cache_len - p), (0, 0))
  x_BxPxD, cache = _embed(params, tokens_BxP, cfg), []
  for lp in params["layers"]:
    q, k_BxKxPxDh, v_BxKxPxDh = _qkv(cfg, lp, x_BxPxD, cos, sin)
    x_BxPxD = _finish(cfg, lp, x_BxPxD, _attend(q, k_BxKxPxDh, v_BxKxPxDh, mask_BxPxP, cfg.head_dim ** -0.5))
    cache.append({"k": jnp.pad(k_BxKxPxDh, grow), "v": jnp.pad(v_BxKxPxDh, grow)})
  return x_BxPxD[:, -1], tuple(cache)


def step(params: dict, cfg: ModelConfig, cache: tuple, tokens_B: jax.Array, positions_B: jax.Array,
         slot: jax.Array, pad_B: jax.Array) -> tuple[jax.Array, tuple]:
  """Feeds one token per row at cache slot `slot`: (its hidden state [B, D] for `logits`, updated
  cache). `slot` is one slot for every row (a scalar), or one per row ([B]: the serving engine's
  rows, which joined at different times; each row attends to its slots pad_b..slot_b)."""
  _check_split(params)
  cache_len = cache[0]["k"].shape[2]
  cos, sin = rope_cos_sin(positions_B[:, None], cfg.head_dim, cfg.rope_theta)
  slots = jnp.arange(cache_len)
  per_row = jnp.ndim(slot) == 1
  upto_Bx1xS = slots[None, None, :] <= (slot[:, None, None] if per_row else slot)
  mask_Bx1xS = upto_Bx1xS & (slots[None, None, :] >= pad_B[:, None, None])
  x_Bx1xD, new_cache = _embed(params, tokens_B[:, None], cfg), []
  for lp, layer_cache in zip(params["layers"], cache):
    q, k, v = _qkv(cfg, lp, x_Bx1xD, cos, sin)
    kv = {name: _write(layer_cache[name], new_BxKx1xDh.astype(layer_cache[name].dtype), slot, per_row)
          for name, new_BxKx1xDh in (("k", k), ("v", v))}
    x_Bx1xD = _finish(cfg, lp, x_Bx1xD, _attend(q, kv["k"], kv["v"], mask_Bx1xS, cfg.head_dim ** -0.5))
    new_cache.append(kv)
  return x_Bx1xD[:, 0], tuple(new_cache)


def _write(cache_BxKxSxDh, new_BxKx1xDh, slot, per_row: bool) -> jax.Array:
  """The cache with each row's new k or v at its slot (one shared slot, or slot[b] per row)."""
  if not per_row:
    return jax.lax.dynamic_update_slice(cache_BxKxSxDh, new_BxKx1xDh, (0, 0, slot, 0))
  rows_B = jnp.arange(cache_BxKxSxDh.shape[0])
  return cache_BxKxSxDh.at[rows_B, :, slot].set(new_BxKx1xDh[:, :, 0], mode="drop")

"""The Phi-3/Phi-4 decoder and its functional API: init, forward, abstract shapes.

Layer parameters are always stacked on a leading "layers" axis, whether the blocks run under
`nn.scan` (cfg.scan_layers) or unrolled, so checkpoints do not depend on that choice.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from phi4_jax.model.config import ModelConfig
from phi4_jax.model.layers import (MLP, Attention, RMSNorm, attention_impl, attention_mask, constrain,
                                   rope_cos_sin)

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_RESIDUAL = ("activation_batch", "activation_length", "activation_embed")


class DecoderBlock(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

  cfg: ModelConfig
  mesh: Any = None

  @nn.compact
  def __call__(self, x_BxTxD, cos_BxTxDh, sin_BxTxDh, segment_ids_BxT, mask_Bx1xTxS):
    cfg = self.cfg
    h = RMSNorm(cfg, name="attn_norm")(x_BxTxD)
    x_BxTxD = x_BxTxD + Attention(cfg, self.mesh, name="attn")(h, cos_BxTxDh, sin_BxTxDh,
                                                                 segment_ids_BxT, mask_Bx1xTxS)
    h = RMSNorm(cfg, name="mlp_norm")(x_BxTxD)
    x_BxTxD = x_BxTxD + MLP(cfg, self.mesh, name="mlp")(h)
    return constrain(x_BxTxD, _RESIDUAL, self.cfg, self.mesh), None


class Decoder(nn.Module):
  """tokens [B,T] -> logits [B,T,V] (float32), or the final hidden states [B,T,D]."""

  cfg: ModelConfig
  mesh: Any = None

  @nn.compact
  def __call__(self, tokens_BxT, segment_ids_BxT=None, positions_BxT=None, return_hidden=False):
    cfg = self.cfg
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    cos_BxTxDh, sin_BxTxDh = rope_cos_sin(positions_BxT, cfg.head_dim, cfg.rope_theta)
    # The mask is built once for every layer (tpu_flash takes the segment ids instead).
    flash = attention_impl(cfg, tokens_BxT.shape[1]) == "tpu_flash"
    mask_Bx1xTxS = None if flash else attention_mask(segment_ids_BxT)

    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                     param_dtype=jnp.dtype(cfg.param_dtype), name="embed",
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(cfg.init_std), ("vocab", "embed")))
    x_BxTxD = constrain(embed(tokens_BxT), _RESIDUAL, cfg, self.mesh)

    block = DecoderBlock
    if cfg.remat_policy != "none":
      block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(nn.broadcast,) * 4, length=cfg.n_layers,
                     unroll=1 if cfg.scan_layers else cfg.n_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    x_BxTxD, _ = layers(cfg, self.mesh, name="layers")(x_BxTxD, cos_BxTxDh, sin_BxTxDh, segment_ids_BxT,
                                                        mask_Bx1xTxS)

    x_BxTxD = RMSNorm(cfg, name="final_norm")(x_BxTxD)
    if return_hidden:
      return x_BxTxD
    logits_BxTxV = nn.DenseGeneral(
        cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
        name="lm_head")(x_BxTxD)
    return constrain(logits_BxTxV.astype(jnp.float32),
                     ("activation_batch", "activation_length", "activation_vocab"), cfg, self.mesh)


def _boxed_init(cfg: ModelConfig, key: jax.Array):
  tokens = jnp.zeros((1, 1), jnp.int32)
  return Decoder(cfg).init(key, tokens)["params"]


def init(cfg: ModelConfig, key: jax.Array) -> dict:
  """Random parameters: a nested dict of arrays (layer params stacked on axis 0)."""
  return nn.meta.unbox(_boxed_init(cfg, key))


def abstract_params(cfg: ModelConfig) -> dict:
  """Parameter shapes and dtypes as jax.ShapeDtypeStruct, allocating nothing."""
  return jax.eval_shape(lambda: init(cfg, jax.random.key(0)))


def logical_axes(cfg: ModelConfig) -> dict:
  """The logical PartitionSpec of every parameter, e.g. P('layers', 'embed', 'heads', 'head_dim')."""
  boxed = jax.eval_shape(lambda: _boxed_init(cfg, jax.random.key(0)))
  return nn.get_partition_spec(boxed)


def forward(params: dict, tokens: jax.Array, cfg: ModelConfig, *, segment_ids: jax.Array | None = None,
            positions: jax.Array | None = None, mesh: Any = None, return_hidden: bool = False) -> jax.Array:
  """Logits [B,T,V] float32 for int tokens [B,T].

  segment_ids [B,T] keep packed documents from attending to each other; positions [B,T] restart
  RoPE per document. With `mesh`, activations are constrained by cfg.axis_rules.
  """
  return Decoder(cfg, mesh).apply({"params": params}, tokens, segment_ids, positions, return_hidden)


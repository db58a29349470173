"""The pieces of a Phi-3 decoder block: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.

Shape letters: B batch, T query length, S key length, D d_model, H query heads, K kv heads,
Dh head_dim, F d_ff.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from phi4_jax.model.attention import blocked_attention
from phi4_jax.model.config import ModelConfig
from phi4_jax.model.tpu_flash import BLOCK as TPU_FLASH_BLOCK, flash_attention


def _init(cfg: ModelConfig, names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), names)


def constrain(x: jax.Array, names: tuple[str, ...], cfg: ModelConfig, mesh: Any) -> jax.Array:
  """Pins an activation's sharding by logical names; a no-op without a mesh."""
  if mesh is None:
    return x
  return nn.with_logical_constraint(x, names, rules=cfg.axis_rules, mesh=mesh)


class RMSNorm(nn.Module):
  """x / rms(x) computed in fp32, cast back to the input dtype, then times a learned scale."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x_BxTxD.shape[-1],), jnp.dtype(self.cfg.param_dtype))
    return rms_norm(x_BxTxD, scale, self.cfg.norm_eps)


def rms_norm(x_BxTxD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """RMSNorm's math (the module above, and the inference decoder, call it)."""
  x32 = x_BxTxD.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return scale_D.astype(x_BxTxD.dtype) * x32.astype(x_BxTxD.dtype)


def rope_cos_sin(positions_BxT: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos and sin tables [B,T,Dh] in fp32 for rotate-half RoPE at the given positions."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs_BxTxHalf = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  angles_BxTxDh = jnp.concatenate([freqs_BxTxHalf, freqs_BxTxHalf], axis=-1)
  return jnp.cos(angles_BxTxDh), jnp.sin(angles_BxTxDh)


def apply_rope(x_BxTxNxDh: jax.Array, cos_BxTxDh: jax.Array, sin_BxTxDh: jax.Array) -> jax.Array:
  """x*cos + rotate_half(x)*sin with rotate_half(x) = cat(-x2, x1); computed in fp32."""
  x = x_BxTxNxDh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos_BxTxDh[:, :, None, :], sin_BxTxDh[:, :, None, :]
  return (x * cos + rotated * sin).astype(x_BxTxNxDh.dtype)


def attention_mask(segment_ids_BxT: jax.Array | None) -> jax.Array | None:
  """Boolean [B,1,T,S]: causal and within the same segment (None when there are no segments)."""
  if segment_ids_BxT is None:
    return None
  t = segment_ids_BxT.shape[1]
  same_segment = segment_ids_BxT[:, None, :, None] == segment_ids_BxT[:, None, None, :]
  causal = jnp.tril(jnp.ones((t, t), dtype=jnp.bool_))
  return same_segment & causal[None, None]


def attention_impl(cfg: ModelConfig, t: int) -> str:
  """auto: cuDNN flash attention on GPU in 16-bit, Pallas flash attention on TPU, and the blocked
  attention elsewhere (CPU, GPU in fp32): none of them holds a [T, S] score matrix. tpu_flash
  takes rows of a multiple of its 128-token block; shorter or ragged rows use the blocked one."""
  if cfg.attention_impl == "tpu_flash" and t % TPU_FLASH_BLOCK:
    return "blocked"
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  backend = jax.default_backend()
  if backend == "gpu" and cfg.dtype in ("bfloat16", "float16"):
    return "cudnn"
  return "tpu_flash" if backend == "tpu" and t % TPU_FLASH_BLOCK == 0 else "blocked"


class Attention(nn.Module):
  """Grouped-query causal self-attention with RoPE and no biases."""

  cfg: ModelConfig
  mesh: Any = None

  @nn.compact
  def __call__(self, x_BxTxD, cos_BxTxDh, sin_BxTxDh, segment_ids_BxT, mask_Bx1xTxS):
    """mask_Bx1xTxS: attention_mask(segment_ids_BxT), built once by the caller for the
    implementations that take a mask (None for tpu_flash, which takes the segment ids)."""
    cfg = self.cfg
    dense = lambda features, names, axis=-1, name=None: nn.DenseGeneral(
        features, axis=axis, use_bias=False, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), kernel_init=_init(cfg, names), name=name)
    q_BxTxHxDh = dense((cfg.n_heads, cfg.head_dim), ("embed", "heads", "head_dim"), name="q")(x_BxTxD)
    k_BxSxKxDh = dense((cfg.n_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="k")(x_BxTxD)
    v_BxSxKxDh = dense((cfg.n_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="v")(x_BxTxD)
    q_BxTxHxDh = apply_rope(q_BxTxHxDh, cos_BxTxDh, sin_BxTxDh)
    k_BxSxKxDh = apply_rope(k_BxSxKxDh, cos_BxTxDh, sin_BxTxDh)
    heads = ("activation_batch", "activation_length", "activation_heads", None)
    q_BxTxHxDh = constrain(q_BxTxHxDh, heads, cfg, self.mesh)
    impl = attention_impl(cfg, x_BxTxD.shape[1])
    if impl == "tpu_flash":
      out_BxTxHxDh = flash_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, segment_ids_BxT,
                                     cfg.head_dim ** -0.5, cfg, self.mesh)
    elif impl == "blocked":
      out_BxTxHxDh = blocked_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_Bx1xTxS,
                                       cfg.head_dim ** -0.5, cfg.attention_block)
    else:
      out_BxTxHxDh = jax.nn.dot_product_attention(
          q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask=mask_Bx1xTxS, is_causal=True,
          scale=cfg.head_dim ** -0.5, implementation=impl)
    out_BxTxHxDh = constrain(out_BxTxHxDh, heads, cfg, self.mesh)
    return dense(cfg.d_model, ("heads", "head_dim", "embed"), axis=(-2, -1), name="o")(out_BxTxHxDh)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)).

  Tokens are flattened to [B*T, D] first: XLA's CPU backward of these matmuls is much slower on
  [B, T, D] inputs (figures in benchmarks/README.md). The math is the same.
  """

  cfg: ModelConfig
  mesh: Any = None

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.cfg
    dense = lambda features, names, name: nn.DenseGeneral(
        features, use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=_init(cfg, names), name=name)
    b, t, d = x_BxTxD.shape
    x_NxD = x_BxTxD.reshape(b * t, d)
    gate_NxF = dense(cfg.d_ff, ("embed", "mlp"), "gate")(x_NxD)
    up_NxF = dense(cfg.d_ff, ("embed", "mlp"), "up")(x_NxD)
    hidden_NxF = constrain(nn.silu(gate_NxF) * up_NxF, ("activation_batch", "activation_mlp"), cfg,
                           self.mesh)
    return dense(cfg.d_model, ("mlp", "embed"), "down")(hidden_NxF).reshape(b, t, d)

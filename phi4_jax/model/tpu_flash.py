"""Pallas flash attention for TPU (jax.experimental.pallas.ops.tpu), with packed segments.

Causal, within-segment attention without a [T, S] score matrix in memory: at midtraining's 16K the
plain XLA attention would hold 16K x 16K scores per head and sequence. The kernel wants equal query
and kv head counts and [B, H, T, D] inputs, so kv heads are repeated to the query heads; under a
mesh it runs per shard in shard_map (a Pallas call is not partitioned by XLA), batch and heads
split as cfg.axis_rules split the activations, each shard's keys whole. Off TPU the kernel runs in
Pallas interpret mode (what the tests compare with XLA attention on CPU).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

BLOCK = 128  # query and key block; the kernel's segment masks need key blocks of 128 lanes


def _kernel(q_BxHxTxD, k_BxHxSxD, v_BxHxSxD, segment_ids_BxT, scale: float):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  block = BLOCK
  sizes = fa.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
                        block_q_dkv=block, block_k_major_dq=block, block_k_dq=block, block_q_dq=block)
  segments = None if segment_ids_BxT is None else fa.SegmentIds(segment_ids_BxT, segment_ids_BxT)
  return fa.flash_attention(q_BxHxTxD, k_BxHxSxD, v_BxHxSxD, segment_ids=segments, causal=True,
                            sm_scale=scale, block_sizes=sizes)


def _interpret_off_tpu() -> None:
  """Off TPU, switches Pallas's TPU kernels to interpret mode (process-wide: the backward kernel
  is traced after a context manager around the forward call would have ended; TPU kernels cannot
  run off TPU any other way)."""
  if jax.default_backend() != "tpu":
    from jax.experimental.pallas import tpu as pltpu
    pltpu.set_tpu_interpret_mode()


def flash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_ids_BxT, scale: float, cfg, mesh=None):
  """Causal attention within segments (segment_ids None: one segment); returns [B, T, H, D]."""
  groups = q_BxTxHxD.shape[2] // k_BxSxKxD.shape[2]
  to_heads_first = lambda x: jnp.swapaxes(x, 1, 2)
  q = to_heads_first(q_BxTxHxD)
  k = to_heads_first(jnp.repeat(k_BxSxKxD, groups, axis=2))
  v = to_heads_first(jnp.repeat(v_BxSxKxD, groups, axis=2))
  if segment_ids_BxT is None:
    segment_ids_BxT = jnp.ones(q_BxTxHxD.shape[:2], jnp.int32)
  _interpret_off_tpu()
  attend = functools.partial(_kernel, scale=scale)
  if mesh is not None:
    batch, heads = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"), cfg.axis_rules)
    qkv, seg = PartitionSpec(batch, heads, None, None), PartitionSpec(batch, None)
    attend = jax.shard_map(attend, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv,
                           check_vma=False)
  return to_heads_first(attend(q, k, v, segment_ids_BxT.astype(jnp.int32)))

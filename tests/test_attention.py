"""Blocked attention (model/attention.py) against XLA's dot_product_attention, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi4_jax.model import attention, layers


def _inputs(t=32, heads=8, kv_heads=2, head_dim=16):
  kq, kk, kv, kd = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(kq, (2, t, heads, head_dim))
  k = jax.random.normal(kk, (2, t, kv_heads, head_dim))
  v = jax.random.normal(kv, (2, t, kv_heads, head_dim))
  dout = jax.random.normal(kd, q.shape)
  segments = np.ones((2, t), np.int32)
  segments[0, 11:], segments[1, 5:20], segments[1, 20:] = 2, 2, 0  # packed rows, padding
  return q, k, v, dout, layers.attention_mask(jnp.asarray(segments))


def _xla(q, k, v, mask):
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, scale=0.25,
                                      implementation="xla")


@pytest.mark.parametrize("block", [8, 12, 32])  # 4 blocks; 12 does not divide 32: one block
@pytest.mark.parametrize("with_mask", [True, False])
def test_blocked_attention_and_its_gradients_equal_xla(block, with_mask):
  q, k, v, dout, mask = _inputs()
  mask = mask if with_mask else None
  ours = lambda q, k, v: attention.blocked_attention(q, k, v, mask, 0.25, block)
  ref = lambda q, k, v: _xla(q, k, v, mask)
  out, vjp = jax.vjp(ours, q, k, v)
  ref_out, ref_vjp = jax.vjp(ref, q, k, v)
  valid = np.asarray(mask.any(-1))[:, 0, :, None, None] if with_mask else True  # rows with a key
  np.testing.assert_allclose(np.where(valid, out, 0), np.where(valid, ref_out, 0), atol=1e-5)
  dout = jnp.where(valid, dout, 0.0)
  for g, ref_g in zip(vjp(dout), ref_vjp(dout)):
    np.testing.assert_allclose(g, ref_g, atol=1e-4)


def test_query_blocks_cover_the_row_once():
  assert attention.query_blocks(32, 8) == [(0, 8), (8, 16), (16, 24), (24, 32)]
  assert attention.query_blocks(30, 8) == [(0, 30)]
  assert len(attention.query_blocks(16384, 128)) == attention.MAX_BLOCKS

"""The paths an accelerator takes (benchmarks/gpu_check.sh runs this file there; on CPU the cuDNN
case skips, and TPU's Pallas flash attention runs in Pallas's interpret mode): each attention
implementation against XLA attention, values and gradients, on packed rows, also sharded; and a bf16
train step against the same step in fp32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi4_jax import model
from phi4_jax.train.config import optimizer_fields
from phi4_jax.train.optimizer import make_optimizer
from phi4_jax.train.step import lm_loss_sums, train_step

CFG = model.ModelConfig.preset("test", vocab_size=512)


def _packed(rows=2, seq=64):
  """Two documents per row (split at 24 and 40) and 4 padding tokens at the end."""
  tokens = jax.random.randint(jax.random.key(1), (rows, seq), 0, CFG.vocab_size)
  seg, pos = np.zeros((rows, seq), np.int32), np.zeros((rows, seq), np.int32)
  for r, split in enumerate((24, 40)[:rows]):
    seg[r, :split], seg[r, split:seq - 4] = 1, 2
    pos[r, :split], pos[r, split:seq - 4] = np.arange(split), np.arange(seq - 4 - split)
  return {"tokens": tokens, "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(pos),
          "loss_mask": jnp.asarray(seg > 0, jnp.int32), "source_ids": jnp.asarray(np.where(seg > 0, 0, -1))}


@pytest.mark.parametrize("impl", ["blocked", "cudnn", "tpu_flash"])
def test_attention_impl_and_its_gradients_equal_xla_attention_on_packed_rows(impl):
  if impl == "cudnn" and jax.default_backend() != "gpu":
    pytest.skip("cuDNN attention needs a GPU")
  dtype = "bfloat16" if impl == "cudnn" else "float32"  # (cuDNN's flash attention is 16-bit only)
  seq = 128 if impl == "tpu_flash" else 64  # (its blocks are 128 tokens)
  params, batch = model.init(CFG, jax.random.key(0)), _packed(seq=seq)
  weights = jax.random.normal(jax.random.key(2), (2, seq, CFG.vocab_size))
  real = np.asarray(batch["segment_ids"] > 0)

  def loss(p, attention_impl):
    cfg = CFG.replace(dtype=dtype, attention_impl=attention_impl)
    logits = model.forward(p, batch["tokens"], cfg, segment_ids=batch["segment_ids"],
                           positions=batch["positions"])
    return jnp.sum(jnp.where(real[..., None], logits * weights, 0.0)), logits

  (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params, impl)
  (ref_value, ref_logits), ref_grads = jax.value_and_grad(loss, has_aux=True)(params, "xla")
  tol = 2e-2 if dtype == "bfloat16" else 1e-4
  scale = np.abs(np.asarray(ref_logits)[real]).max()
  assert np.abs(np.asarray(logits)[real] - np.asarray(ref_logits)[real]).max() <= tol * scale
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert np.abs(np.asarray(g) - np.asarray(r)).max() <= tol * (np.abs(np.asarray(r)).max() + 1e-6)


def test_tpu_flash_attention_sharded_over_batch_and_heads_equals_unsharded_xla():
  params, batch = model.init(CFG, jax.random.key(0)), _packed(rows=2, seq=256)
  mesh = model.make_mesh((1, 2, 2), devices=jax.devices()[:4])  # batch over fsdp, heads over tensor
  cfg = CFG.replace(attention_impl="tpu_flash")
  forward = jax.jit(lambda p, t, s, q: model.forward(p, t, cfg, segment_ids=s, positions=q, mesh=mesh),
                    in_shardings=(model.param_shardings(cfg, mesh), *[model.batch_sharding(mesh)] * 3))
  args = (batch["tokens"], batch["segment_ids"], batch["positions"])
  got = forward(model.shard_params(params, cfg, mesh), *args)
  want = model.forward(params, *args[:1], CFG.replace(attention_impl="xla"), segment_ids=args[1],
                       positions=args[2])
  real = np.asarray(batch["segment_ids"] > 0)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-4)


def test_bf16_train_step_tracks_the_fp32_step():
  optimizer = make_optimizer(optimizer_fields(warmup_steps=0, peak_lr=1e-3, eps=1e-4), total_steps=10)
  params = model.init(CFG, jax.random.key(0))
  batch = jax.tree.map(lambda x: x[None], _packed())  # one microbatch [1, B, T]
  results = {}
  for dtype in ("float32", "bfloat16"):
    loss_fn = functools.partial(lm_loss_sums, cfg=CFG.replace(dtype=dtype), num_sources=1, loss_chunk=32)
    state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}
    results[dtype] = jax.jit(functools.partial(train_step, optimizer=optimizer, loss_fn=loss_fn))(state, batch)
  (state32, m32), (state16, m16) = results["float32"], results["bfloat16"]
  assert np.isfinite(float(m16["loss"])) and abs(float(m16["loss"]) - float(m32["loss"])) < 0.02 * float(m32["loss"])
  assert abs(float(m16["grad_norm"]) - float(m32["grad_norm"])) < 0.05 * float(m32["grad_norm"])
  assert jax.tree.leaves(state16["params"])[0].dtype == jnp.float32  # (params stay fp32)
  moved32 = jax.tree.map(lambda a, b: a - b, state32["params"], params)
  moved16 = jax.tree.map(lambda a, b: a - b, state16["params"], params)
  num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(moved16), jax.tree.leaves(moved32)))
  den = sum(float(jnp.sum(a ** 2)) for a in jax.tree.leaves(moved32))
  assert (num / den) ** 0.5 < 0.1  # the bf16 update is within 10% of the fp32 one

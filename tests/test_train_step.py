"""The train step against a second code path: other meshes, accumulation, a hand-made loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from phi4_jax import model
from phi4_jax.model.output import next_token_targets, target_logprobs
from phi4_jax.train import loop
from phi4_jax.train.config import optimizer_fields
from phi4_jax.train.optimizer import lr_schedule, make_optimizer, weight_decay_mask
from phi4_jax.train.step import fused_cross_entropy, lm_loss_sums, train_step

CFG = model.ModelConfig.preset("test", vocab_size=512)
NUM_SOURCES = 3


def _batch(key, rows=8, seq=32):
  k1, k2 = jax.random.split(key)
  tokens = jax.random.randint(k1, (rows, seq), 0, CFG.vocab_size)
  # two documents per row with a random split point, and some padding at the end
  split = np.asarray(jax.random.randint(k2, (rows,), 4, seq - 8))
  seg = np.zeros((rows, seq), np.int32)
  pos = np.zeros((rows, seq), np.int32)
  for r, s in enumerate(split):
    seg[r, :s], seg[r, s:seq - 3] = 1, 2
    pos[r, :s], pos[r, s:seq - 3] = np.arange(s), np.arange(seq - 3 - s)
  return {"tokens": tokens, "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(pos),
          "loss_mask": jnp.asarray(seg > 0, jnp.int32),
          "source_ids": jnp.asarray(np.where(seg > 0, seg % NUM_SOURCES, -1))}


@pytest.fixture(scope="module")
def setup():
  # Adam's first update is ~lr * g / |g|: with eps 1e-8 a gradient entry near 0 turns float noise
  # between two code paths into a full-size update, so eps is raised to keep comparisons meaningful.
  opt_cfg = optimizer_fields(warmup_steps=2, peak_lr=1e-2, eps=1e-4)
  optimizer = make_optimizer(opt_cfg, total_steps=10)
  params = model.init(CFG, jax.random.key(0))
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}
  return optimizer, state, _batch(jax.random.key(1))


def _loss_fn(mesh=None):
  return functools.partial(lm_loss_sums, cfg=CFG, num_sources=NUM_SOURCES, loss_chunk=8, mesh=mesh)


def _step(optimizer, state, batch_MxBxT, mesh=None):
  fn = functools.partial(train_step, optimizer=optimizer, loss_fn=_loss_fn(mesh))
  return jax.jit(fn)(state, batch_MxBxT)


def test_targets_stop_at_document_boundaries():
  batch = {"tokens": jnp.array([[5, 6, 7, 8, 9, 0]]), "segment_ids": jnp.array([[1, 1, 1, 2, 2, 0]]),
           "loss_mask": jnp.array([[1, 1, 1, 1, 1, 0]]), "source_ids": jnp.array([[0, 0, 0, 1, 1, -1]])}
  targets, weights, sources = next_token_targets(batch)
  np.testing.assert_array_equal(targets[0, :5], [6, 7, 8, 9, 0])
  np.testing.assert_array_equal(weights[0], [1, 1, 0, 1, 0, 0])  # 7->8 crosses documents
  np.testing.assert_array_equal(sources[0, :4], [0, 0, 1, 1])


def test_loss_equals_hand_softmax(setup):
  _, state, batch = setup
  params = state["params"]
  total, sums = lm_loss_sums(params, batch, cfg=CFG, num_sources=NUM_SOURCES, loss_chunk=8)
  logits = np.asarray(model.forward(params, batch["tokens"], CFG, segment_ids=batch["segment_ids"],
                                    positions=batch["positions"]), np.float64)
  targets, weights, sources = (np.asarray(x) for x in next_token_targets(batch))
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(total), (nll * weights).sum(), rtol=1e-5)
  assert float(sums["denominator"]) == weights.sum()
  for s in range(NUM_SOURCES):
    np.testing.assert_allclose(float(sums["source_loss_sum"][s]),
                               (nll * weights * (sources == s)).sum(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("chunk", [0, 4, 5])  # 5 does not divide 16: one chunk
def test_fused_cross_entropy_and_its_gradients_equal_plain_autodiff(chunk):
  h = jax.random.normal(jax.random.key(2), (2, 16, 8))
  w = jax.random.normal(jax.random.key(3), (8, 50))
  y = jax.random.randint(jax.random.key(4), (2, 16), 0, 50)
  weights = (jax.random.uniform(jax.random.key(5), (2, 16)) > 0.3).astype(jnp.float32)

  def plain(h, w):
    logp = jax.nn.log_softmax(h @ w, axis=-1)
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    return (nll * weights).sum(), nll

  def fused(h, w):
    return fused_cross_entropy(h, w, y, weights, chunk, jnp.float32)

  (loss, nll), (ref_loss, ref_nll) = fused(h, w), plain(h, w)
  np.testing.assert_allclose(nll, ref_nll, rtol=1e-5)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  grads = jax.grad(lambda h, w: 3.0 * fused(h, w)[0], argnums=(0, 1))(h, w)
  ref_grads = jax.grad(lambda h, w: 3.0 * plain(h, w)[0], argnums=(0, 1))(h, w)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [0, 4, 5])
def test_target_logprobs_and_their_gradients_equal_plain_autodiff(chunk):
  """DPO's per-token log-probs with any per-token cotangent (its hand-written backward pass)."""
  h = jax.random.normal(jax.random.key(6), (2, 16, 8))
  w = jax.random.normal(jax.random.key(7), (8, 50))
  y = jax.random.randint(jax.random.key(8), (2, 16), 0, 50)
  g = jax.random.normal(jax.random.key(9), (2, 16))
  plain = lambda h, w: jnp.take_along_axis(jax.nn.log_softmax(h @ w, axis=-1), y[..., None], axis=-1)[..., 0]
  ours = lambda h, w: target_logprobs(h, w, y, jnp.float32, chunk)
  np.testing.assert_allclose(ours(h, w), plain(h, w), rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda h, w: jnp.sum(g * ours(h, w)), argnums=(0, 1))(h, w)
  ref_grads = jax.grad(lambda h, w: jnp.sum(g * plain(h, w)), argnums=(0, 1))(h, w)
  for got, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_sharded_step_equals_single_device(setup):
  optimizer, state, batch = setup
  batch1 = jax.tree.map(lambda x: x[None], batch)
  ref_state, ref_m = _step(optimizer, jax.tree.map(jnp.copy, state), batch1)

  mesh = model.make_mesh((1, 4, 2))
  param_shardings = model.param_shardings(CFG, mesh)
  shardings = loop.state_shardings(optimizer, state["params"], param_shardings, mesh)
  sharded_state = jax.device_put(state, shardings)
  mu = sharded_state["opt_state"][1][0].mu["layers"]["mlp"]["gate"]["kernel"]
  assert mu.sharding.spec == PartitionSpec(None, "fsdp", "tensor")  # Adam moments follow params
  batch_sharding = model.batch_sharding(mesh, microbatched=True)
  fn = functools.partial(train_step, optimizer=optimizer, loss_fn=_loss_fn(mesh))
  step = jax.jit(fn, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
  new_state, m = step(sharded_state, jax.device_put(batch1, batch_sharding))
  np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               new_state["params"], ref_state["params"])


def test_grad_accumulation_equals_one_big_batch(setup):
  optimizer, state, batch = setup
  one_state, one_m = _step(optimizer, jax.tree.map(jnp.copy, state), jax.tree.map(lambda x: x[None], batch))
  four = jax.tree.map(lambda x: x.reshape(4, 2, *x.shape[1:]), batch)
  acc_state, acc_m = _step(optimizer, jax.tree.map(jnp.copy, state), four)
  np.testing.assert_allclose(acc_m["loss"], one_m["loss"], rtol=1e-5)
  np.testing.assert_allclose(acc_m["grad_norm"], one_m["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               acc_state["params"], one_state["params"])


def test_schedule_and_decay_mask():
  opt = optimizer_fields(peak_lr=1.0, warmup_steps=4, end_lr_ratio=0.1)
  sched = lr_schedule(opt, total_steps=14)
  # update k is step k + 1: warmup 1/4, 2/4, ... peak at step 4, then 10 steps down to 0.1 at step 14
  np.testing.assert_allclose([float(sched(k)) for k in (0, 1, 3, 8, 13)], [0.25, 0.5, 1.0, 0.55, 0.1],
                             atol=1e-6)
  mask = weight_decay_mask(model.abstract_params(CFG), decay_embeddings=False)
  assert mask["layers"]["mlp"]["gate"]["kernel"] and mask["lm_head"]["kernel"]
  assert not mask["final_norm"]["scale"] and not mask["layers"]["attn_norm"]["scale"]
  assert not mask["embed"]["embedding"]

"""The decoder against hand computations and against itself under other code paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi4_jax import model
from phi4_jax.model import layers

TEST_CFG = model.ModelConfig.preset("test", vocab_size=512)


@pytest.fixture(scope="module")
def params():
  return model.init(TEST_CFG, jax.random.key(0))


def test_phi4_14b_parameter_count_without_allocation():
  shapes = model.abstract_params(model.ModelConfig.preset("phi4_14b"))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 14_659_507_200
  # 243 HF tensors = 40 layers x 6 + embed + final norm + lm_head; ours stack the 9 per-layer tensors, 12 leaves.
  assert len(jax.tree.leaves(shapes)) == 12


def test_every_parameter_has_logical_axes():
  specs = model.logical_axes(model.ModelConfig.preset("phi4_14b"))
  shapes = model.abstract_params(model.ModelConfig.preset("phi4_14b"))
  for spec, shape in zip(jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                         jax.tree.leaves(shapes)):
    assert len(spec) == len(shape.shape) and all(name is not None for name in spec)
  assert tuple(specs["layers"]["attn"]["q"]["kernel"]) == ("layers", "embed", "heads", "head_dim")


def test_rmsnorm_matches_hand_computation():
  x = jnp.array([[[1.0, 2.0, 3.0, 4.0]]])
  out = layers.RMSNorm(TEST_CFG).apply({"params": {"scale": jnp.array([1.0, 2.0, 1.0, 0.5])}}, x)
  rms = np.sqrt((1 + 4 + 9 + 16) / 4 + TEST_CFG.norm_eps)
  np.testing.assert_allclose(out[0, 0], np.array([1.0, 4.0, 3.0, 2.0]) / rms, rtol=1e-6)


def test_rope_rotates_pairs_by_position_times_frequency():
  head_dim, theta, pos = 4, 100.0, 3.0
  x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
  cos, sin = layers.rope_cos_sin(jnp.array([[pos]]), head_dim, theta)
  out = np.asarray(layers.apply_rope(x, cos, sin)).ravel()
  freqs = [1.0, theta ** -0.5]  # 1/theta^(2i/Dh) for i = 0, 1
  expected = []
  for i in range(2):  # rotate-half pairs are (x[i], x[i + Dh/2])
    a, b, angle = [1.0, 2.0][i], [3.0, 4.0][i], pos * freqs[i]
    expected.append((a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)))
  np.testing.assert_allclose(out, [expected[0][0], expected[1][0], expected[0][1], expected[1][1]],
                             rtol=1e-6)


def test_attention_matches_explicit_gqa_loop(params):
  """jax.nn.dot_product_attention path vs a per-head numpy computation of the same layer."""
  cfg = TEST_CFG
  attn_params = jax.tree.map(lambda x: x[0], params["layers"]["attn"])
  x = jax.random.normal(jax.random.key(1), (1, 5, cfg.d_model))
  pos = jnp.arange(5)[None]
  cos, sin = layers.rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
  ours = layers.Attention(cfg).apply({"params": attn_params}, x, cos, sin, None, None)  # (no segments, no mask)

  q = layers.apply_rope(jnp.einsum("btd,dhk->bthk", x, attn_params["q"]["kernel"]), cos, sin)[0]
  k = layers.apply_rope(jnp.einsum("btd,dhk->bthk", x, attn_params["k"]["kernel"]), cos, sin)[0]
  v = jnp.einsum("btd,dhk->bthk", x, attn_params["v"]["kernel"])[0]
  group = cfg.n_heads // cfg.n_kv_heads
  out = np.zeros((5, cfg.n_heads, cfg.head_dim))
  for h in range(cfg.n_heads):
    scores = np.asarray(q[:, h] @ k[:, h // group].T) / np.sqrt(cfg.head_dim)
    scores[np.triu_indices(5, 1)] = -np.inf
    w = np.exp(scores - scores.max(-1, keepdims=True))
    out[:, h] = (w / w.sum(-1, keepdims=True)) @ np.asarray(v[:, h // group])
  expected = np.einsum("thk,hkd->td", out, attn_params["o"]["kernel"])
  np.testing.assert_allclose(ours[0], expected, atol=1e-5)


def test_scan_unrolled_and_remat_agree(params):
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, TEST_CFG.vocab_size)
  ref = model.forward(params, tokens, TEST_CFG)
  for overrides in ({"scan_layers": False}, {"remat_policy": "full"}, {"remat_policy": "dots_saveable"}):
    np.testing.assert_allclose(model.forward(params, tokens, TEST_CFG.replace(**overrides)), ref,
                               atol=1e-5, err_msg=str(overrides))


def test_packed_segments_equal_documents_run_alone(params):
  doc_a = jax.random.randint(jax.random.key(3), (7,), 0, TEST_CFG.vocab_size)
  doc_b = jax.random.randint(jax.random.key(4), (6,), 0, TEST_CFG.vocab_size)
  tokens = jnp.concatenate([doc_a, doc_b, jnp.zeros(3, jnp.int32)])[None]
  segment_ids = jnp.array([[1] * 7 + [2] * 6 + [0] * 3])
  positions = jnp.array([list(range(7)) + list(range(6)) + [0] * 3])
  packed = model.forward(params, tokens, TEST_CFG, segment_ids=segment_ids, positions=positions)
  np.testing.assert_allclose(packed[0, :7], model.forward(params, doc_a[None], TEST_CFG)[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 7:13], model.forward(params, doc_b[None], TEST_CFG)[0], atol=1e-5)
  # Without segments the second document would see the first: the logits must differ.
  unpacked = model.forward(params, tokens, TEST_CFG)
  assert np.abs(unpacked[0, 7:13] - packed[0, 7:13]).max() > 1e-3


def test_sharded_forward_equals_unsharded(params):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  tokens = jax.random.randint(jax.random.key(5), (4, 16), 0, TEST_CFG.vocab_size)
  ref = model.forward(params, tokens, TEST_CFG)
  mesh = model.make_mesh((1, 4, 2))  # data x fsdp x tensor
  shardings = model.param_shardings(TEST_CFG, mesh)
  sharded = model.shard_params(params, TEST_CFG, mesh)
  q_sharding = sharded["layers"]["attn"]["q"]["kernel"].sharding
  assert q_sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert len(q_sharding.device_set) == 8
  fwd = jax.jit(lambda p, t: model.forward(p, t, TEST_CFG, mesh=mesh),
                in_shardings=(shardings, model.batch_sharding(mesh)))
  np.testing.assert_allclose(fwd(sharded, tokens), ref, atol=1e-5)


def test_bf16_compute_stays_close_to_fp32(params):
  tokens = jax.random.randint(jax.random.key(6), (1, 8), 0, TEST_CFG.vocab_size)
  ref = model.forward(params, tokens, TEST_CFG)
  low = model.forward(params, tokens, TEST_CFG.replace(dtype="bfloat16"))
  assert low.dtype == jnp.float32
  assert np.abs(np.asarray(low) - np.asarray(ref)).max() < 0.05 * np.abs(np.asarray(ref)).max() + 0.02


def test_flops_per_token_hand_count():
  cfg = model.ModelConfig.preset("phi4_14b")
  # non-embedding matmul params: 40 x (qkvo 65,536,000 + mlp 275,251,200) + lm_head 513,802,240
  matmul = 40 * (5120 * 128 * (40 + 10 + 10 + 40) + 3 * 5120 * 17920) + 5120 * 100352
  assert model.flops_per_token(cfg, 4096) == 6 * matmul + 6 * 40 * 40 * 128 * 4096


@pytest.mark.parametrize("field,value,message", [
    ("n_kv_heads", 3, "n_kv_heads"), ("head_dim", 7, "head_dim"), ("dtype", "fp8", "dtype"),
    ("remat_policy", "some", "remat_policy"), ("d_model", 0, "d_model")])
def test_bad_config_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    TEST_CFG.replace(**{field: value})


def test_config_json_round_trip():
  cfg = model.ModelConfig.preset("colab")
  import json
  assert model.ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
  with pytest.raises(ValueError, match=r"unknown field ModelConfig.d_modle \(did you mean d_model\?\)"):
    model.ModelConfig.from_dict({"d_modle": 3})

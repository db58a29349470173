"""The KV-cache sampler and scoring against transformers, a full-forward recomputation and numpy."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from phi4_jax import hf, inference, model
from phi4_jax.inference import batching, decoder, sampling

generate_module = importlib.import_module("phi4_jax.inference.generate")  # the module, not the function

PEAKED_PROMPT = [5, 17, 9, 3, 25]
PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [400], [7, 7, 7, 120, 33, 2, 64, 11, 9, 301, 12, 13, 14, 15, 16, 17,
                                                  18, 19], [500, 501]]


@pytest.fixture(scope="module")
def hf_net(tmp_path_factory, make_tiny_phi3):
  """A tiny random Phi3ForCausalLM (GQA 4:1), saved and loaded through hf.load."""
  path = str(tmp_path_factory.mktemp("hf_infer"))
  net = make_tiny_phi3(path, vocab_size=768, hidden_size=64, intermediate_size=160, max_positions=128,
                       rope_theta=10_000.0, std=0.1)
  cfg, params = inference.load(path)
  return net, cfg, params, path


@pytest.fixture(scope="module")
def tiny():
  cfg = model.ModelConfig.preset("test", vocab_size=512, max_seq_len=256)
  return cfg, model.init(cfg, jax.random.key(1))


def _hf_greedy(net, prompt, n):
  with torch.no_grad():
    out = net.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0, eos_token_id=None)
  return out[0, len(prompt):].tolist()


def test_greedy_batch_of_mixed_lengths_equals_transformers_on_each_prompt_alone(hf_net):
  net, cfg, params, _ = hf_net
  outs = inference.generate(params, cfg, PROMPTS, max_new_tokens=12, stop_ids=())
  assert outs == [_hf_greedy(net, p, 12) for p in PROMPTS]


def test_logprobs_equal_transformers_log_softmax(hf_net):
  net, cfg, params, _ = hf_net
  completions = [[1, 2, 3], [700, 5], [9] * 20, [0]]
  lps = inference.logprobs(params, cfg, PROMPTS, completions)
  for prompt, completion, lp in zip(PROMPTS, completions, lps):
    with torch.no_grad():
      logits = net(torch.tensor([prompt + completion])).logits[0].double()
    ref = torch.log_softmax(logits, -1)[torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1),
                                        torch.tensor(completion)].numpy()
    assert lp.dtype == np.float32 and lp.shape == (len(completion),)
    np.testing.assert_allclose(lp, ref, atol=1e-4)


def test_load_reads_a_workdir_and_an_hf_folder_alike(hf_net, tmp_path):
  _, cfg, params, path = hf_net
  hf.import_checkpoint(path, str(tmp_path / "w"))
  cfg2, params2 = inference.load(str(tmp_path / "w"))
  assert cfg2.d_model == cfg.d_model
  jax.tree.map(np.testing.assert_array_equal, params, params2)
  # jax arrays, so that jitted calls do not copy numpy params to the device every time
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params2))
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(inference.load(path)[1]))
  with pytest.raises(ValueError, match="step=3: .* Hugging Face folder"):
    inference.load(path, step=3)


def test_greedy_equals_argmax_of_a_full_forward_recomputation(tiny):
  cfg, params = tiny
  outs = inference.generate(params, cfg, PROMPTS, max_new_tokens=10, stop_ids=())
  # The model is causal, so one forward over prompt + generated tokens (right-padded to one shape:
  # one compile) gives at each position the logits a cache-free recomputation of that step gets.
  width = max(len(p) for p in PROMPTS) + 10
  seqs = [list(p) + out for p, out in zip(PROMPTS, outs)]
  padded = jnp.asarray([s + [0] * (width - len(s)) for s in seqs])
  logits = jax.jit(lambda t: model.forward(params, t, cfg))(padded)
  for prompt, seq, row in zip(PROMPTS, seqs, np.asarray(logits)):
    assert len(seq) == len(prompt) + 10
    assert seq[len(prompt):] == row[len(prompt) - 1:len(seq) - 1].argmax(-1).tolist()
  # one prompt alone decodes one row (on CPU through the layers' [D, F] down-projection copies)
  assert inference.generate(params, cfg, PROMPTS[:1], max_new_tokens=10, stop_ids=()) == outs[:1]


def test_stream_yields_what_generate_returns(tiny):
  cfg, params = tiny
  for temperature in (0.0, 1.0):
    kw = dict(max_new_tokens=9, temperature=temperature, seed=3, stop_ids=())
    assert list(inference.stream(params, cfg, PROMPTS[0], **kw)) == \
        inference.generate(params, cfg, PROMPTS[:1], **kw)[0]


def test_sharded_on_8_devices_gives_the_single_device_tokens(tiny):
  cfg, params = tiny
  mesh = model.make_mesh((1, 4, 2))
  single = inference.generate(params, cfg, PROMPTS, max_new_tokens=8, stop_ids=())
  sharded = inference.generate(params, cfg, PROMPTS, max_new_tokens=8, stop_ids=(), mesh=mesh)
  assert sharded == single
  lps = inference.logprobs(params, cfg, PROMPTS, single)
  lps_sharded = inference.logprobs(params, cfg, PROMPTS, single, mesh=mesh)
  for a, b in zip(lps, lps_sharded):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stop_ids_and_max_new_tokens_are_honoured_per_row(tiny):
  cfg, params = tiny
  free = inference.generate(params, cfg, PROMPTS, max_new_tokens=10, stop_ids=())
  stop = free[0][3]  # row 0 stops at its 4th token; rows without it run to max_new_tokens
  outs = inference.generate(params, cfg, PROMPTS, max_new_tokens=10, stop_ids=(stop,))
  for full, out in zip(free, outs):
    cut = full.index(stop) + 1 if stop in full else len(full)
    assert out == full[:cut]
  assert len(outs[0]) == free[0].index(stop) + 1 <= 4
  assert [len(o) for o in inference.generate(params, cfg, PROMPTS, max_new_tokens=3, stop_ids=())] == [3] * 4


def test_many_prompt_lengths_compile_a_handful_of_times(tiny):
  cfg, params = tiny
  lengths = list(range(1, 61, 3)) + [2, 5, 33]
  prompts = [[(7 * i + j) % 500 for j in range(n)] for i, n in enumerate(lengths)]
  before = sum(batching.COMPILES.values())
  outs = inference.generate(params, cfg, prompts, max_new_tokens=4, stop_ids=())
  assert len(outs) == len(prompts) and all(len(o) == 4 for o in outs)
  compiles = sum(batching.COMPILES.values()) - before
  assert compiles <= 6, (compiles, len(set(lengths)))  # 23 lengths -> 3 length buckets x 2 functions


def _first_token_counts(cfg, params, prompt, n, **kw):
  outs = inference.generate(params, cfg, [prompt], max_new_tokens=1, num_samples=n, stop_ids=(), **kw)
  return np.bincount([o[0] for o in outs], minlength=cfg.vocab_size) / n


@pytest.fixture(scope="module")
def peaked():
  """A 64-token vocabulary and a sharpened output layer: a first-token distribution far from
  uniform, so frequency checks have power."""
  cfg = model.ModelConfig.preset("test", vocab_size=64, max_seq_len=64)
  params = model.init(cfg, jax.random.key(2))
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 60.0
  logits = np.asarray(model.forward(params, jnp.asarray([PEAKED_PROMPT]), cfg)[0, -1], np.float64)
  return cfg, params, logits


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def test_temperature_sampling_matches_the_softmax_and_draws_fresh_keys(peaked):
  cfg, params, logits = peaked
  n = 4000
  for temperature in (1.0, 0.5):
    freq = _first_token_counts(cfg, params, PEAKED_PROMPT, n, temperature=temperature, seed=0)
    expected = _softmax(logits / temperature)
    tv = 0.5 * np.abs(freq - expected).sum()
    assert tv < 0.04, (temperature, tv)
    wrong = _softmax(logits / (2 * temperature))  # what a temperature applied twice would give
    assert 0.5 * np.abs(freq - wrong).sum() > 0.1
    assert np.count_nonzero(freq) >= 3  # a reused key would give one token for every sample
  again = _first_token_counts(cfg, params, PEAKED_PROMPT, 200, temperature=1.0, seed=0)
  other = _first_token_counts(cfg, params, PEAKED_PROMPT, 200, temperature=1.0, seed=1)
  assert np.array_equal(again, _first_token_counts(cfg, params, PEAKED_PROMPT, 200, temperature=1.0,
                                                   seed=0))
  assert not np.array_equal(again, other)


def test_top_k_and_top_p_never_leave_their_sets(peaked):
  cfg, params, logits = peaked
  freq = _first_token_counts(cfg, params, PEAKED_PROMPT, 2000, temperature=1.5, top_k=3, seed=4)
  assert set(np.flatnonzero(freq)) <= set(np.argsort(logits)[-3:])
  probs = _softmax(logits / 1.5)
  order = np.argsort(-probs)
  before = np.cumsum(probs[order]) - probs[order]
  nucleus = set(order[before < 0.7])
  freq = _first_token_counts(cfg, params, PEAKED_PROMPT, 2000, temperature=1.5, top_p=0.7, seed=5)
  assert set(np.flatnonzero(freq)) <= nucleus and len(np.flatnonzero(freq)) > 1
  renormalized = np.zeros_like(probs)
  renormalized[list(nucleus)] = probs[list(nucleus)] / probs[list(nucleus)].sum()
  assert 0.5 * np.abs(freq - renormalized).sum() < 0.06


def test_filter_logits_on_a_hand_table():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keep = lambda **kw: np.isfinite(np.asarray(sampling.filter_logits(
      logits, sampling.Sampler.make(1.0, kw.get("k", 0), kw.get("p", 1.0)), jnp.float32(kw.get("p", 1.0)))))[0]
  assert keep(k=2).tolist() == [True, True, False, False]
  assert keep(p=0.5).tolist() == [True, False, False, False]  # 0.5 alone reaches 0.5
  assert keep(p=0.8).tolist() == [True, True, False, False]
  assert keep(p=0.81).tolist() == [True, True, True, False]


@pytest.mark.parametrize("peaked", [False, True])  # bisection; the top-k path (every row's top 64 hold p)
def test_the_nucleus_equals_the_sorted_one_with_ties_and_masked_logits(peaked):
  rng = np.random.default_rng(0)
  scale = rng.uniform(12, 30, (64, 1)) if peaked else rng.uniform(0.1, 8, (64, 1))
  logits = (rng.standard_normal((64, 3000)) * scale).astype(np.float32)
  logits[:8] = np.round(logits[:8] / 4) * 4  # many ties
  logits[8:16, ::3] = -np.inf  # what a top-k cut leaves
  if not peaked:
    logits[16:20] = 0.0  # uniform rows
  top64_mass = lambda row: np.sort(np.exp(row - row.max()))[-64:].sum() / np.exp(row - row.max()).sum()
  for top_p in (0.05, 0.5, 0.9, 0.999):
    assert all(top64_mass(row) >= top_p for row in logits.astype(np.float64)) == peaked
    kept = np.isfinite(np.asarray(sampling.filter_logits(
        jnp.asarray(logits), sampling.Sampler.make(1.0, 0, top_p), jnp.float32(top_p))))
    for row, k in zip(logits.astype(np.float64), kept):  # keep a token while the mass before it is < p
      order = np.argsort(-row, kind="stable")
      probs = np.exp(row[order] - row.max()) / np.exp(row - row.max()).sum()
      before = np.cumsum(probs) - probs
      cutoff = row[order][before < top_p].min()
      differ = np.flatnonzero(k != (row >= cutoff))  # only where float32 sums round across top_p
      assert all(abs(np.cumsum(probs[row[order] > row[i]]).max(initial=0) - top_p) < 1e-5 for i in differ), (
          top_p, differ)
    assert kept.sum() < kept.size


def test_samples_of_one_prompt_share_its_prefill_and_greedy_samples_agree(tiny):
  cfg, params = tiny
  before = batching.COMPILES["prefill"]
  outs = inference.generate(params, cfg, PROMPTS[:2], max_new_tokens=5, num_samples=8, stop_ids=())
  assert len(outs) == 16 and all(o == outs[0] for o in outs[:8]) and all(o == outs[8] for o in outs[8:])
  assert outs[0::8] == inference.generate(params, cfg, PROMPTS[:2], max_new_tokens=5, stop_ids=())
  assert batching.COMPILES["prefill"] - before <= 2
  split = decoder.split_layers(params)  # split once for every call with the same arrays
  assert split is decoder.split_layers(params) and len(split["layers"]) == cfg.n_layers
  if jax.default_backend() == "cpu":
    np.testing.assert_array_equal(split["layers"][1]["down_DxF"], params["layers"]["mlp"]["down"]["kernel"][1].T)
  with pytest.raises(TypeError, match="take decoder.split_layers"):
    decoder.step(params, cfg, (), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32), 0,
                 jnp.zeros((1,), jnp.int32))


def test_rows_decoded_in_logit_chunks_draw_what_they_draw_alone(tiny):
  cfg, params = tiny
  split = decoder.split_layers(params)
  n = 2 * decoder.LOGIT_ROWS  # more rows than one chunk: on CPU, lax.map over 2 chunks
  x_BxD = jax.random.normal(jax.random.key(3), (n, cfg.d_model))
  rows = decoder.next_tokens(split, cfg, x_BxD, lambda logits, rows: rows)
  np.testing.assert_array_equal(rows, np.arange(n))
  greedy = decoder.next_tokens(split, cfg, x_BxD, lambda logits, rows: jnp.argmax(logits, -1))
  np.testing.assert_array_equal(greedy, jnp.argmax(decoder.logits(split, cfg, x_BxD), -1))
  # greedy=True: on CPU, several rows take the argmax of logits made as [V, B] from the [V, D]
  # kernel copy (same tokens; `choose` is not called); one row, or another backend, calls `choose`
  cpu = jax.default_backend() == "cpu"
  assert ("lm_head_VxD" in split) == cpu
  for rows_n in (1, 3, n):
    np.testing.assert_array_equal(
        decoder.next_tokens(split, cfg, x_BxD[:rows_n], lambda logits, rows: -1 - rows, greedy=True),
        jnp.argmax(decoder.logits(split, cfg, x_BxD[:rows_n]), -1) if cpu and rows_n > 1
        else -1 - np.arange(rows_n))
  # 2 prompts x 64 samples decode as 128 rows; each prompt alone as 64 (one chunk): same draws
  both = inference.generate(params, cfg, PROMPTS[:2], max_new_tokens=4, temperature=1.0,
                            num_samples=decoder.LOGIT_ROWS, stop_ids=(), max_batch=n)
  alone = [o for i in range(2) for o in inference.generate(
      params, cfg, [PROMPTS[i]], max_new_tokens=4, temperature=1.0, num_samples=decoder.LOGIT_ROWS,
      stop_ids=(), sample_ids=[i])]
  assert both == alone and len({tuple(o) for o in both}) > 10


def test_rows_that_stop_leave_the_batch_and_change_no_token(tiny, monkeypatch):
  cfg, params = tiny
  # half the vocabulary stops a row: rows stop after 1, 2, 3, ... tokens
  kwargs = dict(max_new_tokens=12, temperature=1.0, num_samples=32, stop_ids=range(0, 256), seed=4)
  compact, sizes = generate_module._compact, []
  monkeypatch.setattr(generate_module, "_compact", lambda *a, **k: sizes.append(len(a[-1])) or compact(*a, **k))
  compacted = inference.generate(params, cfg, PROMPTS[:3], **kwargs)
  assert sizes and sizes[0] <= 64 and sizes == sorted(sizes, reverse=True)  # 128 rows -> 64 -> ...
  monkeypatch.setattr(generate_module, "MIN_COMPACT_ROWS", 10**9)  # never compact
  assert compacted == inference.generate(params, cfg, PROMPTS[:3], **kwargs)
  lengths = [len(o) for o in compacted]
  assert min(lengths) == 1 and max(lengths) >= 6 and all(o[-1] < 256 for o in compacted if len(o) < 12)


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompts=[]), "prompts: expected a non-empty list"),
    (dict(prompts=[[1], []]), r"prompts\[1\]: expected a non-empty list"),
    (dict(prompts=[[1, 512]]), r"prompts\[0\]: token id 512 is outside the vocabulary"),
    (dict(prompts=[[-1]]), r"prompts\[0\]: token id -1"),
    (dict(max_new_tokens=0), "max_new_tokens: must be a positive int"),
    (dict(max_new_tokens=-2), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature: must be >= 0"),
    (dict(top_p=0.0), r"top_p: must be in \(0, 1\]"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(num_samples=0), "num_samples"),
    (dict(prompts=[[1], [2] * 250]), r"prompts\[1\]: 250 tokens \+ 8 new tokens exceed cfg.max_seq_len=256"),
])
def test_bad_arguments_name_the_argument(tiny, kwargs, message):
  cfg, params = tiny
  call = {"prompts": [[1, 2]], "max_new_tokens": 8, **kwargs}
  with pytest.raises(ValueError, match=message):
    inference.generate(params, cfg, call.pop("prompts"), **call)


def test_logprobs_bad_arguments(tiny):
  cfg, params = tiny
  with pytest.raises(ValueError, match="completions: expected one token-id list per prompt"):
    inference.logprobs(params, cfg, [[1], [2]], [[3]])
  with pytest.raises(ValueError, match=r"prompts\[i\] \+ completions\[i\]\[0\]: token id 999"):
    inference.logprobs(params, cfg, [[1]], [[999]])


def test_packing_is_first_fit_decreasing_and_never_overflows():
  from phi4_jax.inference import scoring
  lengths = [30, 5, 20, 12, 3, 31, 1]
  rows = scoring.pack(lengths, 32)
  assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
  assert all(sum(lengths[i] for i in r) <= 32 for r in rows)
  assert len(rows) == 4  # 102 tokens need at least 4 rows of 32


def test_inverse_cdf_draws_each_token_by_its_probability_and_never_a_masked_one():

  from phi4_jax.inference.sampling import BLOCK, inverse_cdf
  rng = np.random.default_rng(0)
  V, n = 2 * BLOCK + 300, 20_000  # three blocks, the last one padded
  logits = rng.normal(size=V).astype(np.float32) * 2
  logits[rng.choice(V, 500, replace=False)] = -np.inf
  logits[BLOCK - 1], logits[BLOCK] = 6.0, 6.0  # mass on both sides of a block boundary
  u = (np.arange(n) + 0.5) / n  # an even grid of uniforms: counts must be n * p to within one
  tokens = np.asarray(inverse_cdf(jnp.asarray(np.tile(logits, (n, 1))), jnp.asarray(u, jnp.float32)))
  p = np.exp(logits - logits.max())
  p /= p.sum()
  counts = np.bincount(tokens, minlength=V)
  assert np.abs(counts - n * p).max() <= 1.5
  assert counts[np.isneginf(logits)].sum() == 0


def test_two_level_argmax_is_jnp_argmax_with_its_ties():
  V = 3 * sampling.BLOCK + 17  # a last block that is mostly padding
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(8, V)).astype(np.float32)
  logits[1, [5, 2000, V - 1]] = 9.0  # ties: the first one wins
  logits[2, [V - 1, V - 2]] = 9.0  # the maximum in the padded block
  logits[3, [sampling.BLOCK - 1, sampling.BLOCK]] = 9.0  # a tie across a block edge
  logits[4, [700, 2500]] = np.inf
  logits[5] = -np.inf  # nothing finite: index 0
  logits[6] = 0.0
  got = sampling.argmax(jnp.asarray(logits))
  np.testing.assert_array_equal(got, jnp.argmax(jnp.asarray(logits), axis=-1))
  assert got.tolist()[:7] == [got.tolist()[0], 5, V - 2, sampling.BLOCK - 1, 700, 0, 0]
  # the [V, B] layout (greedy columns): the same index for every column
  np.testing.assert_array_equal(sampling.argmax(jnp.asarray(logits.T.copy()), axis=0), got)

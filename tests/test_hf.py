"""Hugging Face Phi3ForCausalLM <-> phi4_jax: logits parity, orbax import/export, streaming memory.

Refusals of bad HF folders and checkpoints are in test_hf_refusals.py; the tiny model both use
(`hf_model`, `loaded`) is in conftest.py."""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from phi4_jax import hf, model
from phi4_jax.hf import mapping
from phi4_jax.hf.__main__ import main as hf_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def _hf_logits(net, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return net(torch.from_numpy(np.asarray(tokens, np.int64))).logits.float().numpy()


def _ours(params, tokens, cfg, **kw) -> np.ndarray:
  return np.asarray(model.forward(jax.tree.map(jax.numpy.asarray, params), tokens, cfg, **kw))


def _tokens(shape, seed=0, vocab=1000):
  return np.random.default_rng(seed).integers(0, vocab, shape, dtype=np.int32)


PHI4_CONFIG = {  # microsoft/phi-4 config.json (transformers 4.x format)
    "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 100257, "embd_pdrop": 0.0, "eos_token_id": 100265, "hidden_act": "silu",
    "hidden_size": 5120, "initializer_range": 0.02, "intermediate_size": 17920,
    "max_position_embeddings": 16384, "model_type": "phi3", "num_attention_heads": 40,
    "num_hidden_layers": 40, "num_key_value_heads": 10, "original_max_position_embeddings": 16384,
    "pad_token_id": 100349, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 250000, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.47.0", "use_cache": True,
    "vocab_size": 100352}


def test_phi4_config():
  cfg = hf.config_from_hf(PHI4_CONFIG)
  assert cfg == model.ModelConfig(param_dtype="bfloat16")
  assert model.param_count(cfg) == 14_659_507_200
  assert len(mapping.hf_tensors(cfg)) == 243
  back = hf.config_to_hf(cfg)
  assert {k: back[k] for k in PHI4_CONFIG if k in back} == {
      k: v for k, v in PHI4_CONFIG.items() if k in back}
  assert hf.config_from_hf(back) == cfg


def test_load_matches_transformers(hf_model, loaded):
  path, net = hf_model
  cfg, params = loaded
  assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta) == (8, 2, 16, 250_000.0)
  assert cfg.param_dtype == "float32"
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(model.abstract_params(cfg), sep="/").items()}
  assert shapes == mapping.param_shapes(cfg)
  tokens = _tokens((2, 24))
  diff = np.abs(_ours(params, tokens, cfg) - _hf_logits(net, tokens)).max()
  assert diff <= TOL, diff


@pytest.mark.parametrize("max_shard_size", ["5GB", 300_000])
def test_save_loads_in_transformers(hf_model, loaded, tmp_path, max_shard_size):
  _, net = hf_model
  cfg, params = loaded
  hf.save(cfg, params, str(tmp_path), max_shard_size=max_shard_size)
  shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
  if max_shard_size == "5GB":
    assert shards == ["model.safetensors"]
  else:
    assert len(shards) > 1 and os.path.exists(tmp_path / "model.safetensors.index.json")
  reloaded = transformers.Phi3ForCausalLM.from_pretrained(str(tmp_path)).eval()
  for name, value in net.state_dict().items():
    torch.testing.assert_close(reloaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
  tokens = _tokens((2, 16), seed=1)
  diff = np.abs(_hf_logits(reloaded, tokens) - _ours(params, tokens, cfg)).max()
  assert diff <= TOL, diff
  cfg2, params2 = hf.load(str(tmp_path))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_save_bfloat16(loaded, tmp_path):
  cfg, params = loaded
  hf.save(cfg, params, str(tmp_path), dtype="bfloat16")
  cfg16, params16 = hf.load(str(tmp_path))
  assert cfg16.param_dtype == "bfloat16"
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(a.dtype)), params16, params)
  reloaded = transformers.Phi3ForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
  assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
  np.testing.assert_array_equal(reloaded.lm_head.weight.detach().float().numpy().T,
                                params16["lm_head"]["kernel"].astype(np.float32))


def test_packed_segments_match_separate_documents(hf_model, loaded):
  _, net = hf_model
  cfg, params = loaded
  docs = [_tokens((1, 7), seed=2), _tokens((1, 9), seed=3)]
  packed = np.concatenate(docs, axis=1)
  segment_ids = np.array([[1] * 7 + [2] * 9], np.int32)
  positions = np.array([list(range(7)) + list(range(9))], np.int32)
  logits = _ours(params, packed, cfg, segment_ids=segment_ids, positions=positions)
  for doc, part in zip(docs, np.split(logits, [7], axis=1)):
    alone = _ours(params, doc, cfg)
    assert np.abs(part - alone).max() <= 1e-5
    assert np.abs(part - _hf_logits(net, doc)).max() <= TOL


def test_import_export_round_trip(hf_model, tmp_path, caplog):
  path, _ = hf_model
  workdir, out = str(tmp_path / "w"), str(tmp_path / "hf")
  hf_main(["import", f"--hf_dir={path}", f"--out={workdir}"])
  assert json.load(open(os.path.join(workdir, "model_config.json")))["rope_theta"] == 250_000.0
  caplog.clear()
  hf_main(["export", f"--workdir={workdir}", f"--out={out}"])
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # (orbax's were 12)
  source, exported = load_file(os.path.join(path, "model.safetensors")), load_file(
      os.path.join(out, "model.safetensors"))
  assert sorted(exported) == sorted(source)
  for name, value in source.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)

  cfg, on_cpu = hf.restore_params(workdir)
  mesh = model.make_mesh((1, -1, 1))
  shardings = model.param_shardings(cfg, mesh)
  _, sharded = hf.restore_params(workdir, step=0, shardings=shardings)
  q = sharded["layers"]["attn"]["q"]["kernel"]
  assert isinstance(q, jax.Array) and len(q.sharding.device_set) == len(jax.devices())
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), sharded, on_cpu)

  # The contract for the training loop: a plain CheckpointManager + StandardRestore reads `params`.
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          model.abstract_params(cfg), shardings)
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mngr:
    assert mngr.latest_step() == 0
    restored = mngr.restore(0, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored["params"], on_cpu)


def test_restore_reads_training_checkpoints(loaded, tmp_path):
  """A checkpoint of jax.Arrays (as the training loop writes) restores through restore_params."""
  cfg, params = loaded
  with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as mngr:
    for step in (3, 7):
      tree = jax.tree.map(lambda x: jax.numpy.asarray(x) * step, params)
      mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(tree)))
  (tmp_path / "model_config.json").write_text(cfg.to_json())
  for step, expected in ((None, 7), (3, 3)):
    _, restored = hf.restore_params(str(tmp_path), step=step)
    np.testing.assert_array_equal(restored["embed"]["embedding"],
                                  params["embed"]["embedding"] * expected)
  with pytest.raises(FileNotFoundError, match="step 5"):
    hf.restore_params(str(tmp_path), step=5)
  hf.export_checkpoint(str(tmp_path), str(tmp_path / "hf"), step=3)  # read leaf by leaf
  _, exported = hf.load(str(tmp_path / "hf"))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b * 3), exported, params)
  with pytest.raises(FileNotFoundError, match="step 5"):
    hf.export_checkpoint(str(tmp_path), str(tmp_path / "hf"), step=5)


_PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _peak_rss_bytes(*command: str) -> int:
  """Peak RSS of `command` run as the only child of a fresh process."""
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], cwd=REPO, env=env,
                       capture_output=True, text=True, check=True)
  return int(out.stdout.split()[-1]) * 1024


def test_streaming_memory_both_directions(tmp_path):
  """`import` and `export` each peak under the interpreter's baseline + 2 x the largest tensor."""
  cfg = model.ModelConfig(vocab_size=100_352, d_model=256, n_layers=2, n_heads=8, n_kv_heads=2,
                          head_dim=32, d_ff=512, max_seq_len=128)
  rng = np.random.default_rng(0)
  source = {t.name: rng.standard_normal(t.shape, dtype=np.float32) for t in mapping.hf_tensors(cfg)}
  total = sum(v.nbytes for v in source.values())
  largest = max(v.nbytes for v in source.values())
  assert total > 200e6 and largest > 100e6  # the whole model would not fit under the bound
  hf_dir, workdir, out = tmp_path / "hf", tmp_path / "w", tmp_path / "out"
  hf_dir.mkdir()
  save_file(source, str(hf_dir / "model.safetensors"))
  (hf_dir / "config.json").write_text(json.dumps(hf.config_to_hf(cfg)))

  # The same modules and a started jax backend, as both conversions have, converting nothing.
  baseline = _peak_rss_bytes(sys.executable, "-c", "import jax, phi4_jax.hf.__main__; jax.devices()")
  cli = (sys.executable, "-m", "phi4_jax.hf")
  peaks = {"import": _peak_rss_bytes(*cli, "import", f"--hf_dir={hf_dir}", f"--out={workdir}"),
           "export": _peak_rss_bytes(*cli, "export", f"--workdir={workdir}", f"--out={out}")}
  print(f"baseline {baseline / 1e6:.0f} MB, largest tensor {largest / 1e6:.0f} MB, model "
        f"{total / 1e6:.0f} MB; peaks: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in peaks.items()))
  for direction, peak in peaks.items():
    assert peak <= baseline + 2 * largest, (direction, peak, baseline, largest)

  exported = load_file(str(out / "model.safetensors"))
  assert sorted(exported) == sorted(source)
  for name, value in source.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  assert hf.read_config(str(out)) == cfg

"""Hugging Face Phi3ForCausalLM <-> phi4_jax: logits parity, orbax import/export, streaming memory."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_dtypes
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


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  """A tiny random Phi3ForCausalLM (GQA 4:1, head_dim 16, theta 250k) saved to a folder."""
  torch.manual_seed(0)
  config = transformers.Phi3Config(
      vocab_size=1000, hidden_size=128, intermediate_size=224, num_hidden_layers=2,
      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
      rope_parameters={"rope_type": "default", "rope_theta": 250_000.0}, pad_token_id=None,
      bos_token_id=None, eos_token_id=None)
  net = transformers.Phi3ForCausalLM(config).eval()
  with torch.no_grad():  # every weight random, norms too, so no swapped tensor goes unnoticed
    for name, p in net.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
  path = str(tmp_path_factory.mktemp("hf_tiny"))
  net.save_pretrained(path)
  return path, net


@pytest.fixture(scope="module")
def loaded(hf_model):
  return hf.load(hf_model[0])


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


def test_import_export_round_trip(hf_model, tmp_path):
  path, _ = hf_model
  workdir, out = str(tmp_path / "w"), str(tmp_path / "hf")
  hf_main(["import", f"--hf_dir={path}", f"--out={workdir}"])
  assert json.load(open(os.path.join(workdir, "model_config.json")))["rope_theta"] == 250_000.0
  hf_main(["export", f"--workdir={workdir}", f"--out={out}"])
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


@pytest.fixture
def hf_copy(hf_model, tmp_path):
  """A writable copy of the tiny HF folder, and its tensors and config."""
  path = tmp_path / "hf"
  shutil.copytree(hf_model[0], path)
  config = json.loads((path / "config.json").read_text())
  return path, load_file(str(path / "model.safetensors")), config


def test_error_no_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load(str(tmp_path))


def test_error_missing_tensor_writes_nothing(hf_copy, tmp_path):
  path, tensors, _ = hf_copy
  del tensors["model.layers.1.mlp.down_proj.weight"]
  save_file(tensors, str(path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"safetensors: missing tensor model\.layers\.1\.mlp\.down"):
    hf.import_checkpoint(str(path), str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.parametrize("field,value", [
    ("architectures", ["LlamaForCausalLM"]), ("model_type", "llama"),
    ("rope_scaling", {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
    ("sliding_window", 16), ("partial_rotary_factor", 0.5)])
def test_error_unsupported_config(hf_copy, field, value):
  path, _, config = hf_copy
  (path / "config.json").write_text(json.dumps({**config, field: value}))
  with pytest.raises(ValueError, match=f"config.json: {field}="):
    hf.load(str(path))


def test_error_import_into_used_workdir(hf_model, tmp_path):
  hf.import_checkpoint(hf_model[0], str(tmp_path))
  with pytest.raises(ValueError, match="already holds checkpoints"):
    hf.import_checkpoint(hf_model[0], str(tmp_path))


def test_error_unexpected_tensor(hf_copy):
  path, tensors, _ = hf_copy
  name = "model.layers.0.self_attn.qkv_proj.bias"
  tensors[name] = np.zeros(192, np.float32)
  save_file(tensors, str(path / "model.safetensors"))
  with pytest.raises(ValueError, match=rf"model\.safetensors: unexpected tensors \['{name}'\]"):
    hf.load(str(path))


# Issue 10: bad inputs are refused before compute, naming the file (and tensor), writing nothing.


def _listing(path) -> dict | None:
  """Every file under path with its size (None if path does not exist): 'as it was' checks."""
  if not os.path.exists(path):
    return None
  return {os.path.relpath(os.path.join(root, f), path): os.path.getsize(os.path.join(root, f))
          for root, _, files in os.walk(path) for f in files}


def _refused_import(hf_dir, workdir, match, exc=ValueError, **kw):
  """Asserts hf.import_checkpoint(hf_dir, workdir) raises matching `match`, changing nothing."""
  before = _listing(workdir)
  with pytest.raises(exc, match=match):
    hf.import_checkpoint(str(hf_dir), str(workdir), **kw)
  assert _listing(workdir) == before


@pytest.mark.parametrize("quant", [
    {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    {"quant_method": "gptq", "bits": 4, "group_size": 128},
    {"quant_method": "awq", "bits": 4, "version": "gemm"},
    {"quant_method": "fp8", "activation_scheme": "dynamic"}])
def test_error_quantized_config(hf_copy, tmp_path, quant):
  path, _, config = hf_copy
  (path / "config.json").write_text(json.dumps({**config, "quantization_config": quant}))
  match = rf"config\.json: quantization_config .*quant_method '{quant['quant_method']}'"
  _refused_import(path, tmp_path / "w", match)
  with pytest.raises(ValueError, match=match):
    hf.load(str(path))


def test_error_quantized_cli(hf_copy, tmp_path, capsys):
  """The command line exits 1 with the message, no traceback, and leaves --out absent."""
  path, _, config = hf_copy
  (path / "config.json").write_text(json.dumps(
      {**config, "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}))
  with pytest.raises(SystemExit) as exit_info:
    hf_main(["import", f"--hf_dir={path}", f"--out={tmp_path / 'w'}"])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert f"{path / 'config.json'}: quantization_config" in err and "'bitsandbytes'" in err, err
  assert not (tmp_path / "w").exists()


def test_error_gptq_quantize_config_file(hf_copy, tmp_path):
  path, _, _ = hf_copy
  (path / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128}))
  _refused_import(path, tmp_path / "w", r"quantize_config\.json: an AutoGPTQ-quantized")


@pytest.mark.parametrize("dtype,code", [(np.int8, "I8"), (np.uint8, "U8"),
                                        (ml_dtypes.float8_e4m3fn, "F8_E4M3")])
def test_error_unrepresentable_dtype(hf_copy, tmp_path, dtype, code):
  path, tensors, _ = hf_copy
  name = "model.layers.1.self_attn.o_proj.weight"
  tensors[name] = np.zeros(tensors[name].shape, dtype)
  save_file(tensors, str(path / "model.safetensors"))
  _refused_import(path, tmp_path / "w", rf"model\.safetensors: tensor {re.escape(name)} has dtype "
                  rf"{code}, which cannot be imported")


@pytest.mark.parametrize("name,index,value", [
    ("model.layers.1.mlp.gate_up_proj.weight", (300, 17), np.nan),   # a layer tensor, read whole
    ("model.embed_tokens.weight", (999, 127), np.inf),               # the last of its row blocks
    ("lm_head.weight", (0, 0), -np.inf)])
def test_error_nonfinite_weights(hf_copy, tmp_path, name, index, value, monkeypatch):
  path, tensors, _ = hf_copy
  tensors[name][index] = value
  save_file(tensors, str(path / "model.safetensors"))
  match = (rf"model\.safetensors: tensor {re.escape(name)} has non-finite values \(first: "
           rf"{re.escape(str(np.float32(value)))} at index {re.escape(str(index))}\)")
  with pytest.raises(ValueError, match=match):
    hf.load(str(path))
  monkeypatch.setattr(mapping, "BLOCK_BYTES", 100 * 128 * 4)  # the embedding in 10 row blocks
  _refused_import(path, tmp_path / "new" / "w", match)  # found mid-stream: the written is removed
  used = tmp_path / "used"
  (used / "checkpoints").mkdir(parents=True)
  (used / "notes.txt").write_text("kept")
  _refused_import(path, used, match)


def test_mixed_dtypes_warn(hf_copy, tmp_path, caplog):
  path, tensors, _ = hf_copy
  name = "model.layers.0.post_attention_layernorm.weight"
  tensors[name] = tensors[name].astype(np.float16)
  save_file(tensors, str(path / "model.safetensors"))
  for dtype in (None, "float32"):  # mixed: warned whether or not dtype= was given
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      cfg, params = hf.load(str(path), dtype=dtype)
    assert cfg.param_dtype == "float32"
    assert params["layers"]["mlp_norm"]["scale"].dtype == np.float32
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "mixed dtypes (F32: 14, F16: 1)" in message and f"{name} (F16)" in message, message
    assert "converting 1 to float32" in message

  caplog.clear()
  with caplog.at_level(logging.WARNING):
    cfg = hf.import_checkpoint(str(path), str(tmp_path / "w"))
  assert cfg.param_dtype == "float32" and f"{name} (F16)" in caplog.text

  tensors[name] = tensors[name].astype(np.float32)  # uniform: no warning, converted or not
  save_file(tensors, str(path / "model.safetensors"))
  for dtype in (None, "bfloat16"):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      hf.load(str(path), dtype=dtype)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_mixed_dtypes_majority_wins(hf_copy, caplog):
  """dtype None takes the dtype of most weights, not the first tensor's (an F16 embedding would
  otherwise turn an F32 checkpoint F16), and the warning lists the first few converted."""
  path, tensors, _ = hf_copy
  for name in [n for n in tensors if "norm" in n] + ["model.embed_tokens.weight"]:
    tensors[name] = tensors[name].astype(np.float16)  # half the tensors, a third of the weights
  save_file(tensors, str(path / "model.safetensors"))
  with caplog.at_level(logging.WARNING):
    cfg, _ = hf.load(str(path))
  assert cfg.param_dtype == "float32"
  converted = sum(v.dtype == np.float16 for v in tensors.values())
  assert f"converting {converted} to float32 (the most common" in caplog.text
  assert f"and {converted - 5} more" in caplog.text


def test_error_config_not_json(hf_copy, tmp_path):
  path, _, config = hf_copy
  (path / "config.json").write_text(json.dumps(config, indent=2)[:-3] + ",\n}")
  _refused_import(path, tmp_path / "w", r"config\.json: not valid JSON: .*line \d+ column \d+")
  (path / "config.json").write_text("[1, 2]")
  _refused_import(path, tmp_path / "w", r"config\.json: expected a JSON object, got list")


def _sharded(loaded, tmp_path) -> tuple:
  cfg, params = loaded
  out = tmp_path / "sharded"
  hf.save(cfg, params, str(out), max_shard_size=300_000)
  return out, sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))


def test_error_missing_shard_writes_nothing(loaded, tmp_path):
  out, shards = _sharded(loaded, tmp_path)
  os.remove(out / shards[1])
  _refused_import(out, tmp_path / "w", rf"index\.json maps tensor .* to shard {shards[1]}, but "
                  rf".*{shards[1]} does not exist", exc=FileNotFoundError)


def test_error_index_names_tensor_shard_lacks(loaded, tmp_path):
  out, shards = _sharded(loaded, tmp_path)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  name = next(n for n, f in index["weight_map"].items() if f == shards[1])
  index["weight_map"][name] = shards[0]
  (out / "model.safetensors.index.json").write_text(json.dumps(index))
  _refused_import(out, tmp_path / "w", rf"index\.json maps tensor {re.escape(name)} to "
                  rf".*{shards[0]}, which has no such tensor")


def test_error_index_not_json(loaded, tmp_path):
  out, _ = _sharded(loaded, tmp_path)
  (out / "model.safetensors.index.json").write_text('{"weight_map": {')
  _refused_import(out, tmp_path / "w", r"model\.safetensors\.index\.json: not valid JSON: "
                  r".*line 1 column \d+")


@pytest.mark.parametrize("keep", ["data", "header", "length"])
def test_error_truncated_shard(loaded, tmp_path, keep):
  out, shards = _sharded(loaded, tmp_path)
  shard = out / shards[1]
  data = shard.read_bytes()
  header_len = int.from_bytes(data[:8], "little")
  size = {"data": len(data) - 100, "header": 8 + header_len // 2, "length": 5}[keep]
  shard.write_bytes(data[:size])
  _refused_import(out, tmp_path / "w", rf"{re.escape(str(shard))}: .*truncated")


def test_error_wrong_shape_writes_nothing(hf_copy, tmp_path):
  path, tensors, _ = hf_copy
  tensors["model.layers.0.self_attn.qkv_proj.weight"] = np.zeros((200, 128), np.float32)
  save_file(tensors, str(path / "model.safetensors"))
  _refused_import(path, tmp_path / "w", r"model\.safetensors: tensor model\.layers\.0\.self_attn"
                  r"\.qkv_proj\.weight has shape \(200, 128\), but config\.json implies \(192, 128\)")


def test_save_refuses_nonfinite_params(loaded, hf_copy, tmp_path):
  """hf.save refuses NaN/inf naming the parameter and index; the target folder stays as it was."""
  cfg, params = loaded
  bad = jax.tree.map(np.copy, params)
  bad["layers"]["attn"]["k"]["kernel"][1, 5, 0, 3] = np.nan
  with pytest.raises(ValueError, match=r"params: parameter layers/attn/k/kernel has non-finite "
                     r"values \(first: nan at index \(1, 5, 0, 3\)\)"):
    hf.save(cfg, bad, str(tmp_path / "new" / "out"))
  assert not (tmp_path / "new" / "out").exists()
  bad = jax.tree.map(np.copy, params)
  bad["lm_head"]["kernel"][7, 900] = np.inf  # lm_head is written in row blocks of its HF rows
  existing = hf_copy[0]
  before = {f: (existing / f).read_bytes() for f in os.listdir(existing)}
  for max_shard_size in ("5GB", 300_000):
    with pytest.raises(ValueError, match=r"parameter lm_head/kernel .*inf at index \(7, 900\)"):
      hf.save(cfg, bad, str(existing), max_shard_size=max_shard_size)
    assert {f: (existing / f).read_bytes() for f in os.listdir(existing)} == before


def test_export_refuses_nonfinite_checkpoint(loaded, tmp_path):
  cfg, params = loaded
  tree = jax.tree.map(np.copy, params)
  tree["embed"]["embedding"][600, 3] = -np.inf
  with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as mngr:
    mngr.save(4, args=ocp.args.Composite(params=ocp.args.StandardSave(tree)))
  (tmp_path / "model_config.json").write_text(cfg.to_json())
  with pytest.raises(ValueError, match=r"checkpoints step 4: parameter embed/embedding has "
                     r"non-finite values \(first: -inf at index \(600, 3\)\); refusing"):
    hf.export_checkpoint(str(tmp_path), str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()


def test_error_dtype_overflow(hf_copy, loaded, tmp_path):
  """Finite weights that a narrower dtype= would turn into inf are refused, in both directions."""
  path, tensors, _ = hf_copy
  name = "model.layers.0.mlp.down_proj.weight"
  tensors[name][3, 4] = 1e5  # beyond float16's 65504
  save_file(tensors, str(path / "model.safetensors"))
  match = (rf"model\.safetensors: tensor {re.escape(name)}, as layers/mlp/down/kernel, has values "
           r"beyond float16's range")
  with pytest.raises(ValueError, match=match):
    hf.load(str(path), dtype="float16")
  _refused_import(path, tmp_path / "w", match, dtype="float16")
  cfg, params = hf.load(str(path))  # bfloat16 has float32's range
  hf.save(cfg, params, str(tmp_path / "bf16"), dtype="bfloat16")
  with pytest.raises(ValueError, match=rf"tensor {re.escape(name)} \(rows from 0\) has values "
                     r"beyond float16's range \(the first, at index \(3, 4\) of the block"):
    hf.save(cfg, params, str(tmp_path / "f16"), dtype="float16")
  assert not (tmp_path / "f16").exists()

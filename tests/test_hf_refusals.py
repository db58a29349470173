"""Hugging Face import and export refuse bad input (issue 10) before any compute, naming the file
and tensor, and writing nothing: missing or unexpected tensors, quantized or unsupported configs,
unrepresentable or non-finite weights, broken shards and indexes."""

import json
import logging
import os
import re
import shutil

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file, save_file

from phi4_jax import hf
from phi4_jax.hf import mapping
from phi4_jax.hf.__main__ import main as hf_main


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

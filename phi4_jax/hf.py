"""Hugging Face Phi3ForCausalLM (phi-4) checkpoints <-> phi4_jax params and orbax checkpoints.

    cfg, params = hf.load(hf_dir)              # config.json + safetensors -> ModelConfig, params
    hf.save(cfg, params, out_dir)              # -> a folder Phi3ForCausalLM.from_pretrained loads
    python -m phi4_jax.hf import --hf_dir=D --out=W [--dtype=bfloat16|float32]
    python -m phi4_jax.hf export --workdir=W --out=D [--step=N]

Checkpoint contract: W/model_config.json holds cfg.to_json(); W/checkpoints is an orbax
CheckpointManager directory whose steps have an item `params` (the model's param tree). `import`
writes step 0, streaming tensors so peak memory stays near one HF tensor (see hf_stream).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Mapping

import jax
import numpy as np

from phi4_jax import hf_stream
from phi4_jax.hf_convert import (INDEX_FILE, SINGLE_FILE, HfTensor, SafetensorsReader, flatten,
                                 hf_tensors, param_shapes, unflatten, write_safetensors)
from phi4_jax import model
from phi4_jax.model import ModelConfig
from phi4_jax.train import checkpoint
from phi4_jax.train import workdir as workdir_lib

CONFIG_FILE = "config.json"
PHI4_VOCAB = 100_352
PHI4_TOKEN_IDS = {"bos_token_id": 100257, "eos_token_id": 100265, "pad_token_id": 100349}
_DTYPE_NAMES = ("float32", "bfloat16", "float16")


def config_from_hf(config: Mapping) -> ModelConfig:
  """ModelConfig from a Phi3ForCausalLM config.json dict; refuses what our model cannot express."""
  def refuse(field: str, value, why: str):
    raise ValueError(f"{field}={value!r} is not supported: {why}")

  if config.get("architectures", ["Phi3ForCausalLM"]) != ["Phi3ForCausalLM"]:
    refuse("architectures", config["architectures"], "expected ['Phi3ForCausalLM']")
  if config.get("model_type") != "phi3":
    refuse("model_type", config.get("model_type"), "expected 'phi3'")
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "max_position_embeddings")
  missing = [field for field in required if field not in config]
  if missing:
    raise ValueError(f"missing fields {missing}")
  rope = dict(config.get("rope_parameters") or {})
  scaling = config.get("rope_scaling") or {}
  if scaling.get("rope_type", scaling.get("type", "default")) != "default":
    refuse("rope_scaling", scaling, "only plain RoPE (rope_scaling null) is implemented")
  if rope.get("rope_type", "default") != "default":
    refuse("rope_parameters.rope_type", rope["rope_type"], "only 'default' RoPE is implemented")
  partials = {"partial_rotary_factor": config.get("partial_rotary_factor", 1.0),
              "rope_parameters.partial_rotary_factor": rope.get("partial_rotary_factor", 1.0)}
  for field, partial in partials.items():
    if partial != 1.0:
      refuse(field, partial, "only full rotary embeddings (1.0) are implemented")
  max_pos = config["max_position_embeddings"]
  if config.get("sliding_window") is not None and config["sliding_window"] < max_pos:
    refuse("sliding_window", config["sliding_window"], "attention is full causal; the window must "
           f"be null or >= max_position_embeddings ({max_pos})")
  if config.get("tie_word_embeddings", False):
    refuse("tie_word_embeddings", True, "embed_tokens and lm_head are separate parameters")
  if config.get("hidden_act", "silu") != "silu":
    refuse("hidden_act", config["hidden_act"], "the MLP is SwiGLU")
  for field in ("attention_bias", "mlp_bias"):
    if config.get(field, False):
      refuse(field, True, "the model has no biases")
  heads = config["num_attention_heads"]
  dtype = config.get("dtype", config.get("torch_dtype"))
  return ModelConfig(
      vocab_size=config["vocab_size"], d_model=config["hidden_size"],
      n_layers=config["num_hidden_layers"], n_heads=heads,
      n_kv_heads=config.get("num_key_value_heads") or heads,
      head_dim=config.get("head_dim") or config["hidden_size"] // heads,
      d_ff=config["intermediate_size"],
      rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))),
      norm_eps=float(config.get("rms_norm_eps", 1e-5)), max_seq_len=max_pos,
      init_std=float(config.get("initializer_range", 0.02)),
      param_dtype=dtype if dtype in _DTYPE_NAMES else "float32")


def config_to_hf(cfg: ModelConfig, dtype: str | None = None) -> dict:
  """A Phi3ForCausalLM config.json dict (the released phi-4's format) for cfg.

  Token ids are phi-4's when the vocabulary is phi-4's, else None (HF builds its embedding with
  padding_idx=pad_token_id, so a pad id must lie inside the vocabulary).
  """
  config = {
      "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta, "rope_scaling": None, "partial_rotary_factor": 1.0,
      "max_position_embeddings": cfg.max_seq_len, "original_max_position_embeddings": cfg.max_seq_len,
      "sliding_window": None, "tie_word_embeddings": False, "attention_bias": False,
      "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
      "initializer_range": cfg.init_std, "use_cache": True, "torch_dtype": dtype or cfg.param_dtype,
      **(PHI4_TOKEN_IDS if cfg.vocab_size == PHI4_VOCAB else dict.fromkeys(PHI4_TOKEN_IDS)),
  }
  if cfg.head_dim * cfg.n_heads != cfg.d_model:
    config["head_dim"] = cfg.head_dim
  return config


def read_config(hf_dir: str) -> ModelConfig:
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir}: no {CONFIG_FILE}; expected a Hugging Face "
                            "Phi3ForCausalLM folder")
  with open(path) as f:
    try:
      return config_from_hf(json.load(f))
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e


def _open(hf_dir: str, dtype) -> tuple[ModelConfig, SafetensorsReader, list[HfTensor], np.dtype]:
  """Config, reader and tensor plan of an HF folder, every tensor checked; and the params dtype."""
  cfg = read_config(hf_dir)
  reader = SafetensorsReader(hf_dir)
  tensors = hf_tensors(cfg)
  reader.check(tensors)
  out_dtype = np.dtype(dtype) if dtype is not None else reader.tensors[tensors[0].name].dtype
  if out_dtype.name not in _DTYPE_NAMES:
    raise ValueError(f"{reader.source}: tensors are {out_dtype.name}; "
                     f"pass dtype= one of {_DTYPE_NAMES}")
  return cfg.replace(param_dtype=out_dtype.name), reader, tensors, out_dtype


def load(hf_dir: str, dtype=None) -> tuple[ModelConfig, dict]:
  """(ModelConfig, numpy params) from an HF folder; dtype None keeps the file's (bf16 stays bf16)."""
  cfg, reader, tensors, out_dtype = _open(hf_dir, dtype)
  flat = {path: np.empty(shape, out_dtype) for path, shape in param_shapes(cfg).items()}
  for t in tensors:
    value = reader.read(t.name)
    for p in t.pieces:
      flat[p.path][p.layer if p.layer is not None else ...] = p.take(value)
  return cfg, unflatten(flat)


def _parse_size(size: int | str) -> int:
  """Bytes from an int or a string such as "5GB", "500MB" (decimal units, as HF uses)."""
  if isinstance(size, int):
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
  if not match:
    raise ValueError(f"max_shard_size {size!r}: expected bytes or a size such as '5GB'")
  return int(float(match[1]) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match[2]])


def save(cfg: ModelConfig, params: Mapping, out_dir: str, dtype=None,
         max_shard_size: int | str = "5GB") -> None:
  """Writes config.json and safetensors (sharded with an index beyond max_shard_size) for HF.

  Tensors are built and written one at a time; dtype None keeps each parameter's dtype.
  """
  flat = flatten(params)
  for path, shape in param_shapes(cfg).items():
    if path not in flat:
      raise ValueError(f"params: missing {path} (expected shape {shape})")
    if tuple(flat[path].shape) != shape:
      raise ValueError(f"params: {path} has shape {tuple(flat[path].shape)}, cfg implies {shape}")
  tensors = hf_tensors(cfg)
  dtypes = {t.name: np.dtype(dtype or flat[t.pieces[0].path].dtype) for t in tensors}
  nbytes = {t.name: math.prod(t.shape) * dtypes[t.name].itemsize for t in tensors}
  shards: list[list[HfTensor]] = [[]]
  limit = _parse_size(max_shard_size)
  for t in tensors:  # in file order, a new shard whenever the next tensor would overflow this one
    if shards[-1] and sum(nbytes[u.name] for u in shards[-1]) + nbytes[t.name] > limit:
      shards.append([])
    shards[-1].append(t)

  os.makedirs(out_dir, exist_ok=True)
  for stale in os.listdir(out_dir):  # a leftover single file or shard would shadow the new ones
    if re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?", stale):
      os.remove(os.path.join(out_dir, stale))
  get = lambda path, layer: np.asarray(flat[path] if layer is None else flat[path][layer])
  by_name = {t.name: t for t in tensors}
  weight_map = {}
  for k, shard in enumerate(shards):
    file = SINGLE_FILE if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(os.path.join(out_dir, file), [(t.name, t.shape, dtypes[t.name]) for t in shard],
                      lambda name: by_name[name].build(get))
    weight_map.update({t.name: file for t in shard})
  if len(shards) > 1:
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}, f,
                indent=2)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config_to_hf(cfg, dtypes[tensors[0].name].name), f, indent=2)


def import_checkpoint(hf_dir: str, workdir: str, dtype=None) -> ModelConfig:
  """HF folder -> W/checkpoints step 0 (`params`) and W/model_config.json, streaming the tensors."""
  cfg, reader, tensors, out_dtype = _open(hf_dir, dtype)
  directory = str(checkpoint.checkpoint_dir(workdir))
  if checkpoint.latest_step(workdir) is not None:
    raise ValueError(f"{directory} already holds checkpoints; import into an empty workdir")
  hf_stream.save_streaming(directory, 0, reader, tensors, param_shapes(cfg), out_dtype)
  workdir_lib.write_model_config(workdir, cfg)
  return cfg


restore_params = workdir_lib.restore_params


def export_checkpoint(workdir: str, out_dir: str, step: int | None = None, dtype=None,
                      max_shard_size: int | str = "5GB") -> ModelConfig:
  """W's latest (or given) checkpoint -> an HF folder."""
  cfg, params = restore_params(workdir, step)
  save(cfg, params, out_dir, dtype=dtype, max_shard_size=max_shard_size)
  return cfg


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m phi4_jax.hf", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  imp = commands.add_parser("import", help="HF folder -> orbax checkpoint in a workdir")
  imp.add_argument("--hf_dir", required=True)
  imp.add_argument("--out", required=True, help="workdir to create")
  imp.add_argument("--dtype", choices=_DTYPE_NAMES, default=None, help="default: the file's dtype")
  exp = commands.add_parser("export", help="workdir checkpoint -> HF folder")
  exp.add_argument("--workdir", required=True)
  exp.add_argument("--out", required=True, help="HF folder to write")
  exp.add_argument("--step", type=int, default=None, help="default: the latest")
  exp.add_argument("--dtype", choices=_DTYPE_NAMES, default=None, help="default: the checkpoint's")
  exp.add_argument("--max_shard_size", default="5GB")
  args = parser.parse_args(argv)
  if args.command == "import":
    cfg = import_checkpoint(args.hf_dir, args.out, args.dtype)
    print(f"imported {args.hf_dir} -> {args.out} ({cfg.param_dtype})")
  else:
    export_checkpoint(args.workdir, args.out, args.step, args.dtype, args.max_shard_size)
    print(f"exported {args.workdir} -> {args.out}")


if __name__ == "__main__":
  main()

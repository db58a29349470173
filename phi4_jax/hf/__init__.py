"""Hugging Face Phi3ForCausalLM (phi-4) checkpoints <-> phi4_jax params and orbax checkpoints.

    cfg, params = hf.load(hf_dir)              # config.json + safetensors -> ModelConfig, params
    hf.save(cfg, params, out_dir)              # -> a folder Phi3ForCausalLM.from_pretrained loads
    python -m phi4_jax.hf import --hf_dir=D --out=W [--dtype=bfloat16|float32]
    python -m phi4_jax.hf export --workdir=W --out=D [--step=N]

Both directions of the workdir conversion stream: `import` writes W's checkpoint step 0 (item
`params`, see stream.py) and `export` reads it back one layer or row block at a time
(train.checkpoint.ParamReader), so peak memory stays near the largest HF tensor, not the model.
Modules: config (config.json), mapping (which HF tensor holds which param), safetensors_io
(lazy reader, streaming writer), stream (import into orbax), __main__ (the command line).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from flax import traverse_util

from phi4_jax.hf.config import config_from_hf, config_to_hf, read_config, write_config
from phi4_jax.hf.mapping import HfTensor, Reader, built_blocks, hf_tensors, param_shapes
from phi4_jax.hf.safetensors_io import SafetensorsReader, write_folder
from phi4_jax.hf.stream import save_streaming
from phi4_jax.model import ModelConfig, abstract_params
from phi4_jax.model.config import DTYPES
from phi4_jax.train import checkpoint
from phi4_jax.train import workdir as workdir_lib

__all__ = ["config_from_hf", "config_to_hf", "export_checkpoint", "import_checkpoint", "load",
           "read_config", "restore_params", "save"]

restore_params = workdir_lib.restore_params


def _open(hf_dir: str, dtype) -> tuple[ModelConfig, SafetensorsReader, list[HfTensor], np.dtype]:
  """Config, reader and tensor plan of an HF folder, every tensor checked; and the params dtype."""
  cfg = read_config(hf_dir)
  reader = SafetensorsReader(hf_dir)
  tensors = hf_tensors(cfg)
  reader.check([(t.name, t.shape) for t in tensors])
  out_dtype = np.dtype(dtype) if dtype is not None else reader.tensors[tensors[0].name].dtype
  if out_dtype.name not in DTYPES:
    raise ValueError(f"{reader.source}: tensors are {out_dtype.name}; pass dtype= one of {DTYPES}")
  return cfg.replace(param_dtype=out_dtype.name), reader, tensors, out_dtype


def load(hf_dir: str, dtype=None) -> tuple[ModelConfig, dict]:
  """(ModelConfig, numpy params) from an HF folder; dtype None keeps the file's (bf16 stays bf16)."""
  cfg, reader, tensors, out_dtype = _open(hf_dir, dtype)
  flat = {path: np.empty(shape, out_dtype) for path, shape in param_shapes(cfg).items()}
  for t in tensors:
    value = reader.read(t.name)
    for p in t.pieces:
      flat[p.path][p.index(0, t.shape[0])] = p.take(value)
  return cfg, traverse_util.unflatten_dict(flat, sep="/")


def _write(cfg: ModelConfig, out_dir: str, read: Reader, dtype_of: Callable[[str], np.dtype],
           max_shard_size: int | str) -> None:
  """The HF folder of cfg's params, built block by block from read(path, index)."""
  tensors = hf_tensors(cfg)
  by_name = {t.name: t for t in tensors}
  specs = [(t.name, t.shape, dtype_of(t.pieces[0].path)) for t in tensors]
  write_folder(out_dir, specs, lambda name: built_blocks(by_name[name], read), max_shard_size)
  write_config(out_dir, cfg, specs[0][2].name)


def save(cfg: ModelConfig, params: Mapping, out_dir: str, dtype=None,
         max_shard_size: int | str = "5GB") -> None:
  """Writes config.json and safetensors (sharded with an index beyond max_shard_size) for HF.

  Tensors are built and written one at a time; dtype None keeps each parameter's dtype.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  for path, shape in param_shapes(cfg).items():
    if path not in flat:
      raise ValueError(f"params: missing {path} (expected shape {shape})")
    if tuple(flat[path].shape) != shape:
      raise ValueError(f"params: {path} has shape {tuple(flat[path].shape)}, cfg implies {shape}")
  _write(cfg, out_dir, lambda path, index: np.asarray(flat[path][index]),
         lambda path: np.dtype(dtype or flat[path].dtype), max_shard_size)


def import_checkpoint(hf_dir: str, workdir: str, dtype=None) -> ModelConfig:
  """HF folder -> W/checkpoints step 0 (`params`) and W/model_config.json, streaming the tensors."""
  cfg, reader, tensors, out_dtype = _open(hf_dir, dtype)
  if checkpoint.latest_step(workdir) is not None:
    raise ValueError(f"{checkpoint.checkpoint_dir(workdir)} already holds checkpoints; import into "
                     "an empty workdir")
  save_streaming(str(checkpoint.checkpoint_dir(workdir)), 0, reader, tensors, param_shapes(cfg),
                 out_dtype)
  workdir_lib.write_model_config(workdir, cfg)
  return cfg


def export_checkpoint(workdir: str, out_dir: str, step: int | None = None, dtype=None,
                      max_shard_size: int | str = "5GB") -> ModelConfig:
  """W's latest (or given) checkpoint -> an HF folder, one layer or row block in memory at a time."""
  cfg = workdir_lib.read_model_config(workdir)
  reader = checkpoint.ParamReader(workdir, abstract_params(cfg), step)
  _write(cfg, out_dir, reader.read, lambda path: np.dtype(dtype or reader.dtypes[path]),
         max_shard_size)
  return cfg

"""Hugging Face Phi3ForCausalLM (phi-4) checkpoints <-> phi4_jax params and orbax checkpoints.

    cfg, params = hf.load(hf_dir)              # config.json + safetensors -> ModelConfig, params
    hf.save(cfg, params, out_dir)              # -> a folder Phi3ForCausalLM.from_pretrained loads
    python -m phi4_jax.hf import --hf_dir=D --out=W [--dtype=bfloat16|float32]
    python -m phi4_jax.hf export --workdir=W --out=D [--step=N]

Both directions of the workdir conversion stream: `import` writes W's checkpoint step 0 (item
`params`, see stream.py) and `export` reads it back one layer or row block at a time
(train.checkpoint.ParamReader), so peak memory stays near the largest HF tensor, not the model.
Modules: config (config.json), mapping (which HF tensor holds which param), safetensors_io
(lazy reader, streaming writer), stream (import into orbax), tokenizer (tokenizer.json for a
folder with the tokenizer's vocabulary), __main__ (the command line).

Refused, naming the file (and tensor or parameter): quantized checkpoints (config.json's
quantization_config, integer or 8-bit tensor dtypes), a config.json or index that is not JSON,
missing, truncated or misshapen tensors, and NaN/inf weights (each block checked as it streams)
or values a narrower dtype= would overflow. A refused import or export leaves its target as it
was. Mixed tensor dtypes convert to the most common one (or dtype=) with a warning naming them.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from flax import traverse_util

from phi4_jax.hf.config import config_from_hf, config_to_hf, read_config, write_config
from phi4_jax.hf.mapping import HfTensor, Reader, built_blocks, hf_tensors, param_shapes
from phi4_jax.hf.safetensors_io import (DTYPE_CODES, SafetensorsReader, first_nonfinite,
                                        refuse_overflow, write_folder)
from phi4_jax.hf.stream import save_streaming
from phi4_jax.hf.tokenizer import write_tokenizer
from phi4_jax.model import ModelConfig, abstract_params
from phi4_jax.model.config import DTYPES
from phi4_jax.store import checkpoint
from phi4_jax.store import workdir as workdir_lib
from phi4_jax.tokenizer import Phi4Tokenizer

__all__ = ["config_from_hf", "config_to_hf", "export_checkpoint", "import_checkpoint", "load",
           "read_config", "restore_params", "save"]

restore_params = workdir_lib.restore_params
_log = logging.getLogger(__name__)


def _open(hf_dir: str, dtype) -> tuple[ModelConfig, SafetensorsReader, list[HfTensor], np.dtype]:
  """Config, reader and tensor plan of an HF folder, every tensor checked; and the params dtype.

  dtype None takes the dtype holding most of the weights. Tensors of mixed dtypes are logged
  (a warning naming those converted), so an odd F16 tensor in an F32 checkpoint is not silent.
  """
  cfg = read_config(hf_dir)
  reader = SafetensorsReader(hf_dir)
  tensors = hf_tensors(cfg)
  reader.check([(t.name, t.shape) for t in tensors])
  stored = {t.name: reader.tensors[t.name].dtype for t in tensors}
  elements = collections.Counter()
  for t in tensors:
    elements[stored[t.name]] += math.prod(t.shape)
  out_dtype = np.dtype(dtype) if dtype is not None else max(elements, key=elements.get)
  if out_dtype.name not in DTYPES:
    raise ValueError(f"{reader.source}: tensors are {out_dtype.name}; pass dtype= one of {DTYPES}")
  if len(elements) > 1:
    counts = collections.Counter(stored.values())
    converted = [f"{name} ({DTYPE_CODES[d]})" for name, d in stored.items() if d != out_dtype]
    _log.warning(
        "%s: tensors have mixed dtypes (%s); converting %d to %s%s: %s%s", reader.source,
        ", ".join(f"{DTYPE_CODES[d]}: {n}" for d, n in counts.most_common()), len(converted),
        out_dtype.name, "" if dtype is not None else " (the most common; pass dtype= to choose)",
        ", ".join(converted[:5]), f" and {len(converted) - 5} more" if len(converted) > 5 else "")
  return cfg.replace(param_dtype=out_dtype.name), reader, tensors, out_dtype


def load(hf_dir: str, dtype=None) -> tuple[ModelConfig, dict]:
  """(ModelConfig, numpy params) from an HF folder; dtype None keeps the file's (bf16 stays bf16)."""
  cfg, reader, tensors, out_dtype = _open(hf_dir, dtype)
  flat = {path: np.empty(shape, out_dtype) for path, shape in param_shapes(cfg).items()}
  for t in tensors:
    value = reader.read(t.name)
    for p in t.pieces:
      with np.errstate(over="ignore"):  # an overflow is refused just below
        flat[p.path][p.index(0, t.shape[0])] = p.take(value)
      if value.dtype != out_dtype:
        refuse_overflow(flat[p.path][p.index(0, t.shape[0])],
                        f"{reader.tensors[t.name].file}: tensor {t.name}, as {p.path},")
  return cfg, traverse_util.unflatten_dict(flat, sep="/")


def _global_index(index: tuple, local: tuple[int, ...]) -> tuple[int, ...]:
  """Index into a whole leaf of element `local` of the block leaf[index] (ints and slices)."""
  out, rest = [], iter(local)
  for i in index:
    out.append(i if isinstance(i, int) else (i.start or 0) + next(rest))
  return (*out, *rest)


def _checked(read: Reader, source: str) -> Reader:
  """read, refusing (naming the parameter and its first bad index) values with a NaN or inf."""
  def checked(path: str, index: tuple) -> np.ndarray:
    values = read(path, index)
    bad = first_nonfinite(values)
    if bad is not None:
      raise ValueError(f"{source}: parameter {path} has non-finite values (first: {values[bad]} "
                       f"at index {_global_index(index, bad)}); refusing to export it")
    return values
  return checked


def _write(cfg: ModelConfig, out_dir: str, read: Reader, dtype_of: Callable[[str], np.dtype],
           max_shard_size: int | str, source: str) -> None:
  """The HF folder of cfg's params, built block by block from read(path, index).

  Every block read is checked for NaN/inf; a refusal leaves out_dir as it was (write_folder).
  """
  tensors = hf_tensors(cfg)
  by_name = {t.name: t for t in tensors}
  specs = [(t.name, t.shape, dtype_of(t.pieces[0].path)) for t in tensors]
  read = _checked(read, source)
  write_folder(out_dir, specs, lambda name: built_blocks(by_name[name], read), max_shard_size)
  write_config(out_dir, cfg, specs[0][2].name)
  if cfg.vocab_size == Phi4Tokenizer.vocab_size:  # (a test model's own vocabulary has no tokenizer)
    write_tokenizer(out_dir, cfg.max_seq_len)


def save(cfg: ModelConfig, params: Mapping, out_dir: str, dtype=None,
         max_shard_size: int | str = "5GB") -> None:
  """Writes config.json and safetensors (sharded with an index beyond max_shard_size) for HF, and
  the tokenizer's files when cfg's vocabulary is the tokenizer's (hf/tokenizer.py).

  Tensors are built and written one at a time; dtype None keeps each parameter's dtype.
  Refuses params with a NaN or inf, naming the parameter.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  for path, shape in param_shapes(cfg).items():
    if path not in flat:
      raise ValueError(f"params: missing {path} (expected shape {shape})")
    if tuple(flat[path].shape) != shape:
      raise ValueError(f"params: {path} has shape {tuple(flat[path].shape)}, cfg implies {shape}")
  _write(cfg, out_dir, lambda path, index: np.asarray(flat[path][index]),
         lambda path: np.dtype(dtype or flat[path].dtype), max_shard_size, "params")


@contextlib.contextmanager
def _left_as_found(directory: str) -> Iterator[None]:
  """On an exception, removes what the block added in `directory`, or all of it if it was new
  (with the parents it needed), so a refused import leaves the filesystem as it was."""
  directory = os.path.abspath(directory)
  if os.path.isdir(directory):
    before = set(os.listdir(directory))
  else:
    before, top = None, directory
    while not os.path.exists(os.path.dirname(top)):
      top = os.path.dirname(top)
  try:
    yield
  except BaseException:
    if before is None:
      shutil.rmtree(top, ignore_errors=True)
    elif os.path.isdir(directory):
      for name in set(os.listdir(directory)) - before:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          os.remove(path)
    raise


def import_checkpoint(hf_dir: str, workdir: str, dtype=None) -> ModelConfig:
  """HF folder -> W/checkpoints step 0 (`params`) and W/model_config.json, streaming the tensors.

  Everything that can be checked up front is (config.json, quantization, tensor names, shapes and
  dtypes) before anything is written; a NaN or inf, found as its block streams through, aborts
  the import and removes what it wrote, leaving the workdir as it was.
  """
  cfg, reader, tensors, out_dtype = _open(hf_dir, dtype)
  directory = checkpoint.checkpoint_dir(workdir)
  if checkpoint.latest_step(workdir) is not None:
    raise ValueError(f"{directory} already holds checkpoints; import into an empty workdir")
  with _left_as_found(str(directory.parent)), _left_as_found(str(directory)):
    save_streaming(str(directory), 0, reader, tensors, param_shapes(cfg), out_dtype)
    workdir_lib.write_model_config(workdir, cfg)
  return cfg


def export_checkpoint(workdir: str, out_dir: str, step: int | None = None, dtype=None,
                      max_shard_size: int | str = "5GB") -> ModelConfig:
  """W's latest (or given) checkpoint -> an HF folder, one layer or row block in memory at a time.

  Refuses a parameter with a NaN or inf (naming it), leaving out_dir as it was.
  """
  cfg = workdir_lib.read_model_config(workdir)
  reader = checkpoint.ParamReader(workdir, abstract_params(cfg), step)
  _write(cfg, out_dir, reader.read, lambda path: np.dtype(dtype or reader.dtypes[path]),
         max_shard_size, reader.where)
  return cfg

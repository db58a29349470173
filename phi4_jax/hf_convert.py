"""Phi3ForCausalLM <-> phi4_jax tensor mapping, and a lazy safetensors reader and streaming writer.

HF keeps q/k/v fused in `qkv_proj` (rows q, then k, then v, head-major) and gate/up fused in
`gate_up_proj` (gate rows first), one tensor per layer; our parameters are split and stacked on a
leading layers axis. Parameters are addressed by flat paths such as "layers/attn/q/kernel".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence

import ml_dtypes
import numpy as np

from phi4_jax.model import ModelConfig, abstract_params

DTYPES = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
          "BF16": np.dtype(ml_dtypes.bfloat16)}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

Getter = Callable[[str, "int | None"], np.ndarray]  # (our param path, layer or None) -> values


@dataclasses.dataclass(frozen=True)
class Piece:
  """Where (part of) an HF tensor lands in our params.

  take maps the HF tensor to the values of `path` (at `layer` for stacked leaves). For unstacked
  leaves, rows_axis is our axis that the HF tensor's first axis maps to, so a row block of the HF
  tensor can be converted and written on its own.
  """

  path: str
  layer: int | None
  take: Callable[[np.ndarray], np.ndarray]
  rows_axis: int | None = None


@dataclasses.dataclass(frozen=True)
class HfTensor:
  """One HF tensor: its name and shape, the pieces it splits into and how to rebuild it."""

  name: str
  shape: tuple[int, ...]
  pieces: tuple[Piece, ...]
  build: Callable[[Getter], np.ndarray]


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Our parameter shapes by flat path, from model.abstract_params (nothing allocated)."""
  return {path: tuple(x.shape) for path, x in flatten(abstract_params(cfg)).items()}


def _layer_tensors(cfg: ModelConfig, i: int) -> list[HfTensor]:
  D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  q, kv = H * Dh, K * Dh
  pre = f"model.layers.{i}."
  qkv_paths = ("layers/attn/q/kernel", "layers/attn/k/kernel", "layers/attn/v/kernel")
  return [
      HfTensor(pre + "input_layernorm.weight", (D,),
               (Piece("layers/attn_norm/scale", i, lambda w: w),),
               lambda get: get("layers/attn_norm/scale", i)),
      HfTensor(pre + "self_attn.qkv_proj.weight", (q + 2 * kv, D), (
          Piece(qkv_paths[0], i, lambda w: w[:q].T.reshape(D, H, Dh)),
          Piece(qkv_paths[1], i, lambda w: w[q:q + kv].T.reshape(D, K, Dh)),
          Piece(qkv_paths[2], i, lambda w: w[q + kv:].T.reshape(D, K, Dh))),
               lambda get: np.concatenate([get(p, i).reshape(D, -1).T for p in qkv_paths])),
      HfTensor(pre + "self_attn.o_proj.weight", (D, q),
               (Piece("layers/attn/o/kernel", i, lambda w: w.T.reshape(H, Dh, D)),),
               lambda get: get("layers/attn/o/kernel", i).reshape(q, D).T),
      HfTensor(pre + "post_attention_layernorm.weight", (D,),
               (Piece("layers/mlp_norm/scale", i, lambda w: w),),
               lambda get: get("layers/mlp_norm/scale", i)),
      HfTensor(pre + "mlp.gate_up_proj.weight", (2 * F, D), (
          Piece("layers/mlp/gate/kernel", i, lambda w: w[:F].T),
          Piece("layers/mlp/up/kernel", i, lambda w: w[F:].T)),
               lambda get: np.concatenate([get("layers/mlp/gate/kernel", i).T,
                                           get("layers/mlp/up/kernel", i).T])),
      HfTensor(pre + "mlp.down_proj.weight", (D, F),
               (Piece("layers/mlp/down/kernel", i, lambda w: w.T),),
               lambda get: get("layers/mlp/down/kernel", i).T),
  ]


def hf_tensors(cfg: ModelConfig) -> list[HfTensor]:
  """Every tensor of the HF checkpoint, in file order: embeddings, layers, final norm, lm_head."""
  V, D = cfg.vocab_size, cfg.d_model
  tensors = [HfTensor("model.embed_tokens.weight", (V, D),
                      (Piece("embed/embedding", None, lambda w: w, rows_axis=0),),
                      lambda get: get("embed/embedding", None))]
  for i in range(cfg.n_layers):
    tensors += _layer_tensors(cfg, i)
  tensors += [HfTensor("model.norm.weight", (D,),
                       (Piece("final_norm/scale", None, lambda w: w, rows_axis=0),),
                       lambda get: get("final_norm/scale", None)),
              HfTensor("lm_head.weight", (V, D),
                       (Piece("lm_head/kernel", None, lambda w: w.T, rows_axis=1),),
                       lambda get: get("lm_head/kernel", None).T)]
  return tensors


def flatten(params: Mapping) -> dict[str, object]:
  """{"layers": {"attn": {"q": {"kernel": x}}}} -> {"layers/attn/q/kernel": x}."""
  flat = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      flat.update({f"{key}/{sub}": leaf for sub, leaf in flatten(value).items()})
    else:
      flat[key] = value
  return flat


def unflatten(flat: Mapping[str, object]) -> dict:
  tree: dict = {}
  for path, leaf in flat.items():
    *parents, name = path.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = leaf
  return tree


@dataclasses.dataclass(frozen=True)
class StoredTensor:
  """Where a tensor's bytes are: file, absolute byte offset, dtype and shape."""

  file: str
  offset: int
  dtype: np.dtype
  shape: tuple[int, ...]


def _read_header(path: str) -> dict[str, StoredTensor]:
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len + 8 > size:
      raise ValueError(f"{path}: not a safetensors file (header length {header_len} > file size)")
    header = json.loads(f.read(header_len))
  header.pop("__metadata__", None)
  tensors = {}
  for name, entry in header.items():
    if entry["dtype"] not in DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']} "
                       f"(supported: {sorted(DTYPES)})")
    dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if end - begin != math.prod(shape) * dtype.itemsize or 8 + header_len + end > size:
      raise ValueError(f"{path}: tensor {name} data [{begin}, {end}) does not fit its shape {shape} "
                       f"and dtype {entry['dtype']}, or the file ({size} bytes) is truncated")
    tensors[name] = StoredTensor(path, 8 + header_len + begin, dtype, shape)
  return tensors


class SafetensorsReader:
  """Lazy access to the tensors of `model.safetensors` or of shards listed in its index.

  Only headers are read up front; `read` loads one tensor (or a row block of it) from disk.
  """

  def __init__(self, hf_dir: str):
    index_path, single_path = os.path.join(hf_dir, INDEX_FILE), os.path.join(hf_dir, SINGLE_FILE)
    self.tensors: dict[str, StoredTensor] = {}
    if os.path.exists(single_path):
      self.source = single_path  # the file that lists the tensors
      self.tensors = _read_header(single_path)
    elif os.path.exists(index_path):
      self.source = index_path
      self._read_index(hf_dir, index_path)
    else:
      raise FileNotFoundError(f"{hf_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found")

  def _read_index(self, hf_dir: str, index_path: str) -> None:
    with open(index_path) as f:
      weight_map: dict[str, str] = json.load(f)["weight_map"]
    headers: dict[str, dict[str, StoredTensor]] = {}
    for name, file in weight_map.items():
      path = os.path.join(hf_dir, file)
      if file not in headers:
        if not os.path.exists(path):
          raise FileNotFoundError(f"{index_path} maps tensor {name} to shard {file}, "
                                  f"but {path} does not exist")
        headers[file] = _read_header(path)
      if name not in headers[file]:
        raise ValueError(f"{index_path} maps tensor {name} to {path}, which has no such tensor")
      self.tensors[name] = headers[file][name]

  def check(self, expected: Sequence[HfTensor]) -> None:
    """Raises naming the tensor and file if one is missing, unexpected or has the wrong shape."""
    for t in expected:
      if t.name not in self.tensors:
        raise ValueError(f"{self.source}: missing tensor {t.name} (expected shape {t.shape})")
      found = self.tensors[t.name].shape
      if found != t.shape:
        raise ValueError(f"{self.tensors[t.name].file}: tensor {t.name} has shape {found}, "
                         f"but config.json implies {t.shape}")
    unexpected = sorted(set(self.tensors) - {t.name for t in expected})
    if unexpected:
      raise ValueError(f"{self.source}: unexpected tensors {unexpected}; a Phi3ForCausalLM with "
                       f"this config.json has no such parameters")

  def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Tensor `name`, or rows [start, stop) of its first axis, read into a new array."""
    t = self.tensors[name]
    stop = t.shape[0] if stop is None else stop
    out = np.empty((stop - start, *t.shape[1:]), t.dtype)
    with open(t.file, "rb") as f:
      f.seek(t.offset + start * math.prod(t.shape[1:]) * t.dtype.itemsize)
      if f.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
        raise ValueError(f"{t.file}: tensor {name} is truncated")
    return out


def write_safetensors(path: str, tensors: list[tuple[str, tuple[int, ...], np.dtype]],
                      make: Callable[[str], np.ndarray]) -> None:
  """Writes a safetensors file tensor by tensor: `make(name)` is called once per tensor, in order."""
  header: dict[str, object] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, shape, dtype in tensors:
    nbytes = math.prod(shape) * dtype.itemsize
    header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
    for name, shape, dtype in tensors:
      value = np.ascontiguousarray(make(name), dtype=dtype)
      if value.shape != shape:
        raise ValueError(f"{path}: tensor {name} has shape {value.shape}, expected {shape}")
      f.write(value.reshape(-1).view(np.uint8))

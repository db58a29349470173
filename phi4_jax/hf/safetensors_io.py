"""Safetensors folders (one file, or shards and an index) read lazily and written tensor by tensor.

Neither direction holds a whole file in memory: the reader reads one tensor, or a row block of
one, at a time; the writer takes each tensor as row blocks that are written as they come.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

from phi4_jax.store import atomic

DTYPES = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
          "BF16": np.dtype(ml_dtypes.bfloat16)}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_WRITTEN_FILES = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")
# Elements checked for NaN/inf at once: the temporary mask stays about 1 MB whatever the block.
_FINITE_CHECK_ELEMENTS = 2**20

TensorSpec = tuple[str, tuple[int, ...], np.dtype]  # name, shape, dtype as written


@dataclasses.dataclass(frozen=True)
class StoredTensor:
  """Where a tensor's bytes are: file, absolute byte offset, dtype and shape."""

  file: str
  offset: int
  dtype: np.dtype
  shape: tuple[int, ...]


def first_nonfinite(values: np.ndarray) -> tuple[int, ...] | None:
  """Index of the first NaN or inf in `values` (row-major order), or None if all are finite.

  A contiguous array is checked in slices of _FINITE_CHECK_ELEMENTS, so no mask of the whole
  array is made (a full np.isfinite would add a byte per element to a streaming conversion).
  """
  values = np.asarray(values)
  if values.size == 0 or values.dtype.kind in "biu":  # integers are always finite
    return None
  if not values.flags.c_contiguous:
    finite = np.isfinite(values)
    return None if finite.all() else tuple(int(i) for i in np.argwhere(~finite)[0])
  flat = values.reshape(-1)
  for start in range(0, flat.size, _FINITE_CHECK_ELEMENTS):
    finite = np.isfinite(flat[start:start + _FINITE_CHECK_ELEMENTS])
    if not finite.all():
      return tuple(int(i) for i in np.unravel_index(start + int(np.argmin(finite)), values.shape))
  return None


def refuse_overflow(converted: np.ndarray, what: str) -> None:
  """Raises if converting (finite values, already checked) to converted.dtype made an inf."""
  bad = first_nonfinite(converted)
  if bad is not None:
    raise ValueError(f"{what} has values beyond {converted.dtype.name}'s range (the first, at index "
                     f"{bad} of the block, becomes {converted[bad]}); use a wider dtype")


def _read_header(path: str) -> dict[str, StoredTensor]:
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    if size < 8:
      raise ValueError(f"{path}: not a safetensors file, or truncated ({size} bytes)")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len + 8 > size:
      raise ValueError(f"{path}: not a safetensors file, or truncated (header length {header_len} "
                       f"> file size {size})")
    try:
      header = json.loads(f.read(header_len))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
      raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {e})") from e
  if not isinstance(header, dict):
    raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
  header.pop("__metadata__", None)
  tensors = {}
  for name, entry in header.items():
    try:
      code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: tensor {name} has a malformed header entry {entry!r}") from e
    if code not in DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {code}, which cannot be imported "
                       f"(supported: {sorted(DTYPES)}); integer and 8-bit dtypes mean a quantized "
                       "checkpoint: dequantize it to F32/F16/BF16 first")
    dtype = DTYPES[code]
    if end - begin != math.prod(shape) * dtype.itemsize or 8 + header_len + end > size:
      raise ValueError(f"{path}: tensor {name} data [{begin}, {end}) does not fit its shape {shape} "
                       f"and dtype {code}, or the file ({size} bytes) is truncated")
    tensors[name] = StoredTensor(path, 8 + header_len + begin, dtype, shape)
  return tensors


class SafetensorsReader:
  """Lazy access to the tensors of `model.safetensors` or of shards listed in its index.

  Only headers are read up front; `read` loads one tensor (or a row block of it) with readinto.
  Not safetensors.safe_open: its get_slice reads the same row blocks in the installed 0.8 (and as
  fast), but it maps the whole file, so every page read stays in RSS while the handle is open, and
  setup.py allows safetensors 0.4/0.5, whose numpy path rejects bfloat16 (safetensors#598).
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
      try:
        weight_map: dict[str, str] = json.load(f)["weight_map"]
      except ValueError as e:  # names the line and column
        raise ValueError(f"{index_path}: not valid JSON: {e}") from e
      except (KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: no weight_map (expected a safetensors index)") from e
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

  def check(self, expected: Sequence[tuple[str, tuple[int, ...]]]) -> None:
    """Raises naming the tensor and file if one of the expected (name, shape) is missing, has
    another shape, or if the folder has a tensor not expected."""
    for name, shape in expected:
      if name not in self.tensors:
        raise ValueError(f"{self.source}: missing tensor {name} (expected shape {shape})")
      found = self.tensors[name].shape
      if found != shape:
        raise ValueError(f"{self.tensors[name].file}: tensor {name} has shape {found}, "
                         f"but config.json implies {shape}")
    unexpected = sorted(set(self.tensors) - {name for name, _ in expected})
    if unexpected:
      raise ValueError(f"{self.source}: unexpected tensors {unexpected}; a Phi3ForCausalLM with "
                       f"this config.json has no such parameters")

  def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Tensor `name`, or rows [start, stop) of its first axis, read into a new array.

    Raises naming the file, tensor and first bad index if the rows hold a NaN or inf.
    """
    t = self.tensors[name]
    stop = t.shape[0] if stop is None else stop
    out = np.empty((stop - start, *t.shape[1:]), t.dtype)
    with open(t.file, "rb") as f:
      f.seek(t.offset + start * math.prod(t.shape[1:]) * t.dtype.itemsize)
      if f.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
        raise ValueError(f"{t.file}: tensor {name} is truncated")
    bad = first_nonfinite(out)
    if bad is not None:
      raise ValueError(f"{t.file}: tensor {name} has non-finite values (first: {out[bad]} at "
                       f"index {(bad[0] + start, *bad[1:])}); refusing a corrupt checkpoint")
    return out


def write_safetensors(path: str, tensors: Sequence[TensorSpec],
                      blocks: Callable[[str], Iterable[np.ndarray]]) -> None:
  """Writes a safetensors file tensor by tensor, each from `blocks(name)`: its rows, in order.

  Hand-written because safetensors' save_file / serialize take every tensor in memory at once.
  """
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
      rows = 0
      for block in blocks(name):
        narrowed = block.dtype != dtype
        with np.errstate(over="ignore"):  # an overflow is refused just below
          block = np.ascontiguousarray(block, dtype=dtype)
        if narrowed:
          refuse_overflow(block, f"tensor {name} (rows from {rows})")
        if block.shape[1:] != shape[1:] or rows + block.shape[0] > shape[0]:
          raise ValueError(f"{path}: tensor {name} got a block of shape {block.shape} after "
                           f"{rows} rows; expected shape {shape}")
        f.write(block.reshape(-1).view(np.uint8))
        rows += block.shape[0]
        del block  # before the next block is built
      if rows != shape[0]:
        raise ValueError(f"{path}: tensor {name} got {rows} rows; expected shape {shape}")


def parse_size(size: int | str) -> int:
  """Bytes from an int or a string such as "5GB", "500MB" (decimal units, as HF uses)."""
  if isinstance(size, int):
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
  if not match:
    raise ValueError(f"max_shard_size {size!r}: expected bytes or a size such as '5GB'")
  return int(float(match[1]) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match[2]])


def _nbytes(spec: TensorSpec) -> int:
  return math.prod(spec[1]) * spec[2].itemsize


def plan_shards(tensors: Sequence[TensorSpec], max_shard_size: int | str) -> list[list[TensorSpec]]:
  """Tensors in file order, a new shard whenever the next tensor would overflow the current one."""
  limit = parse_size(max_shard_size)
  shards: list[list[TensorSpec]] = [[]]
  for spec in tensors:
    if shards[-1] and sum(map(_nbytes, shards[-1])) + _nbytes(spec) > limit:
      shards.append([])
    shards[-1].append(spec)
  return shards


def write_folder(out_dir: str, tensors: Sequence[TensorSpec],
                 blocks: Callable[[str], Iterable[np.ndarray]], max_shard_size: int | str) -> None:
  """model.safetensors, or shards and their index when the tensors exceed max_shard_size.

  Files are written under store.atomic's temporary names and renamed into place (replacing any
  earlier single file or shards) only once all are written, so a failure (a refused block, a full
  disk) leaves out_dir as it was; overwriting a folder needs room for both copies meanwhile.
  """
  shards = plan_shards(tensors, max_shard_size)
  created = not os.path.isdir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  files = [SINGLE_FILE] if len(shards) == 1 else [
      f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
  try:
    with contextlib.ExitStack() as renames:  # (each renamed into place as the stack closes)
      temporaries = [renames.enter_context(atomic.replacing(os.path.join(out_dir, f))) for f in files]
      for tmp, shard in zip(temporaries, shards):
        write_safetensors(tmp, shard, blocks)
      for stale in os.listdir(out_dir):  # a leftover single file or shard would shadow the new ones
        if _WRITTEN_FILES.fullmatch(stale):
          os.remove(os.path.join(out_dir, stale))
  except BaseException:
    if created and not os.listdir(out_dir):
      os.rmdir(out_dir)
    raise
  if len(shards) > 1:
    weight_map = {name: file for file, shard in zip(files, shards) for name, _, _ in shard}
    atomic.write_json(os.path.join(out_dir, INDEX_FILE),
                      {"metadata": {"total_size": sum(map(_nbytes, tensors))}, "weight_map": weight_map},
                      indent=2)

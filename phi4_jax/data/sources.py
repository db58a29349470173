"""Document sources: files matched by globs, read lazily by record index.

jsonl is random-access through a cached index of line offsets; jsonl.gz is decompressed once
into the cache (gzip cannot seek); parquet reads whole row groups (cached) and exposes them as
shuffle blocks; ArrayRecord is random-access natively. A record that cannot give a document
(malformed JSON, missing text field, invalid UTF-8, empty text) comes back as a `Skip` naming
its file and line, so the run goes on and reports it.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from phi4_jax.data import corpus
from phi4_jax.data.planner import Leaf

FORMATS = ("jsonl", "jsonl.gz", "parquet", "arrayrecord")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl.gz", ".json.gz": "jsonl.gz",
               ".parquet": "parquet", ".arrayrecord": "arrayrecord", ".array_record": "arrayrecord"}


class Skip(NamedTuple):
  reason: str  # malformed_json | missing_field | invalid_utf8 | empty
  where: str  # "path:line" (jsonl) or "path:row N" / "path:record N"


_LOGGED_SKIPS = 20  # per source: the first ones are logged with their place, later ones only counted


def count_skip(counts: dict[str, int], source: str, skip: Skip) -> None:
  """Counts a skipped record by reason, and logs where it is while few have been skipped."""
  counts[skip.reason] = counts.get(skip.reason, 0) + 1
  if sum(counts.values()) <= _LOGGED_SKIPS:
    logging.warning("source %s: skipped %s (%s)", source, skip.where, skip.reason)


def _file_key(path: str, *extra: str) -> str:
  st = os.stat(path)
  text = "|".join([os.path.abspath(path), str(st.st_size), str(st.st_mtime_ns), *extra])
  return hashlib.sha1(text.encode()).hexdigest()[:20]


def atomic_write(path: str, write) -> None:
  """write(tmp_path), then rename it to path: readers never see a partial file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
  write(tmp)
  os.replace(tmp, path)


def save_npy(path: str, array: np.ndarray) -> None:
  """np.save through atomic_write."""
  def write(tmp):
    with open(tmp, "wb") as f:
      np.save(f, array)
  atomic_write(path, write)


def _text_of(raw: bytes, text_field: str, where: str) -> str | Skip:
  """A record's bytes -> its document text, or why it has none."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    return Skip("invalid_utf8", where)
  if text_field:
    try:
      obj = json.loads(text)
    except ValueError:
      return Skip("malformed_json", where)
    text = obj.get(text_field) if isinstance(obj, dict) else None
    if not isinstance(text, str):
      return Skip("missing_field", where)
  return text if text.strip() else Skip("empty", where)


class JsonlFile:
  """One jsonl file; record i is line i + 1. `shown` is the path used in reports."""

  def __init__(self, path: str, text_field: str, cache_dir: str, shown: str | None = None):
    self.path, self.text_field, self.shown = path, text_field, shown or path
    self._index_path = os.path.join(cache_dir, "index", _file_key(path) + ".npy")
    self._starts = None

  def __getstate__(self):
    return {**self.__dict__, "_starts": None}

  def _offsets(self) -> np.ndarray:
    """int64 [n + 1]: byte offset of each line start, then the end of the file."""
    if self._starts is None:
      if os.path.exists(self._index_path):
        self._starts = np.load(self._index_path)
      else:
        self._starts = self._scan()
        save_npy(self._index_path, self._starts)
    return self._starts

  def _scan(self) -> np.ndarray:
    starts, base = [np.zeros(1, np.int64)], 0
    with open(self.path, "rb") as f:
      while chunk := f.read(1 << 26):
        starts.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10).astype(np.int64) + base + 1)
        base += len(chunk)
    offsets = np.concatenate(starts)
    return offsets if offsets[-1] == base else np.append(offsets, base)

  def __len__(self) -> int:
    return len(self._offsets()) - 1

  def read(self, indices: list[int]) -> list[str | Skip]:
    offsets = self._offsets()
    out = []
    fd = os.open(self.path, os.O_RDONLY)
    try:
      for i in indices:
        start, end = int(offsets[i]), int(offsets[i + 1])
        out.append(_text_of(os.pread(fd, end - start, start), self.text_field, f"{self.shown}:{i + 1}"))
    finally:
      os.close(fd)
    return out


def _gunzipped(path: str, cache_dir: str) -> str:
  target = os.path.join(cache_dir, "gunzip", _file_key(path) + ".jsonl")
  if not os.path.exists(target):
    def write(tmp):
      with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    atomic_write(target, write)
  return target


class ParquetFile:
  """One parquet file; a record is a row. Row groups are decoded whole and kept (LRU of 4)."""

  def __init__(self, path: str, text_field: str):
    import pyarrow.parquet as pq
    self.path, self.text_field = path, text_field
    meta = pq.ParquetFile(path).metadata
    if text_field not in meta.schema.names:
      raise ValueError(f"{path}: parquet file has no column {text_field!r} "
                       f"(columns: {meta.schema.names})")
    self.group_starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    self._lock, self._groups = threading.Lock(), OrderedDict()

  def __getstate__(self):
    return {**self.__dict__, "_lock": None, "_groups": None}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock(), _groups=OrderedDict())

  def __len__(self) -> int:
    return int(self.group_starts[-1])

  def _group(self, g: int) -> list:
    with self._lock:
      if g in self._groups:
        self._groups.move_to_end(g)
        return self._groups[g]
    import pyarrow.parquet as pq
    values = pq.ParquetFile(self.path).read_row_group(g, columns=[self.text_field]).column(0).to_pylist()
    with self._lock:
      self._groups[g] = values
      while len(self._groups) > 4:
        self._groups.popitem(last=False)
    return values

  def read(self, indices: list[int]) -> list[str | Skip]:
    out = []
    for i in indices:
      g = int(np.searchsorted(self.group_starts, i, side="right")) - 1
      value = self._group(g)[i - self.group_starts[g]]
      where = f"{self.path}:row {i}"
      if isinstance(value, bytes):
        out.append(_text_of(value, "", where))
      elif not isinstance(value, str):
        out.append(Skip("missing_field", where))
      else:
        out.append(value if value.strip() else Skip("empty", where))
    return out


class ArrayRecordFile:
  """One ArrayRecord file; records are JSON objects, or raw UTF-8 text when text_field is ""."""

  def __init__(self, path: str, text_field: str):
    from grain.sources import ArrayRecordDataSource
    self.path, self.text_field = path, text_field
    self._records = ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self._records)

  def read(self, indices: list[int]) -> list[str | Skip]:
    raws = self._records.__getitems__(indices)
    return [_text_of(raw, self.text_field, f"{self.path}:record {i}") for i, raw in zip(indices, raws)]


def detect_format(path: str) -> str | None:
  for ext, fmt in sorted(_EXTENSIONS.items(), key=lambda kv: -len(kv[0])):
    if path.endswith(ext):
      return fmt
  return None


def resolve_globs(globs: str, field: str) -> list[str]:
  """Sorted files of comma-separated globs; a glob that matches no file is an error naming `field`."""
  patterns = [g.strip() for g in globs.split(",") if g.strip()]
  if not patterns:
    raise ValueError(f"{field}: no path globs given")
  files = []
  for pattern in patterns:
    expanded = os.path.expanduser(os.path.expandvars(pattern))
    matched = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    if not matched:
      unset = " (an environment variable in it is not set)" if "$" in expanded else ""
      raise ValueError(f"{field}: glob {pattern!r} matches no file{unset}")
    files += matched
  return list(dict.fromkeys(files))


class Source:
  """The documents of one leaf source: records of its files in sorted-path order."""

  def __init__(self, name: str, files: list[str], fmt: str, text_field: str, cache_dir: str,
               field: str):
    self.name, self.files, self.text_field = name, files, text_field
    self.readers = []
    for path in files:
      kind = fmt or detect_format(path)
      if kind not in FORMATS:
        raise ValueError(f"{field}: unknown format {kind or '(none)'!r} for {path} "
                         f"(known: {', '.join(FORMATS)}; set {field}.format)")
      if kind == "jsonl":
        self.readers.append(JsonlFile(path, text_field, cache_dir))
      elif kind == "jsonl.gz":
        self.readers.append(JsonlFile(_gunzipped(path, cache_dir), text_field, cache_dir, shown=path))
      elif kind == "parquet":
        self.readers.append(ParquetFile(path, text_field))
      else:
        self.readers.append(ArrayRecordFile(path, text_field))
    self.file_starts = np.cumsum([0] + [len(r) for r in self.readers])
    self.fingerprint = hashlib.sha1("|".join(
        [fmt, text_field] + [_file_key(p) for p in files]).encode()).hexdigest()[:20]

  def __len__(self) -> int:
    return int(self.file_starts[-1])

  def block_starts(self) -> np.ndarray | None:
    """Record index where each parquet row group starts (shuffle blocks), or None (uniform shuffle)."""
    if not any(isinstance(r, ParquetFile) for r in self.readers):
      return None
    starts = [base + (r.group_starts[:-1] if isinstance(r, ParquetFile) else np.arange(len(r)))
              for base, r in zip(self.file_starts[:-1], self.readers)]
    return np.concatenate(starts).astype(np.int64)

  def read(self, indices) -> list[str | Skip]:
    """Texts (or Skips) of records `indices`, in that order; each file is opened once."""
    indices = np.asarray(indices, np.int64)
    files = np.searchsorted(self.file_starts, indices, side="right") - 1
    out: list = [None] * len(indices)
    for f in np.unique(files):
      where = np.flatnonzero(files == f)
      local = (indices[where] - self.file_starts[f]).tolist()
      for k, text in zip(where.tolist(), self.readers[f].read(local)):
        out[k] = text
    return out


def open_source(leaf: Leaf, cache_dir: str) -> Source:
  """The documents of a leaf of config.data.sources (`corpus:<name>` globs build the corpus)."""
  globs = corpus.resolve(leaf.cfg.globs, cache_dir)
  return Source(leaf.name, resolve_globs(globs, f"{leaf.field}.globs"), leaf.cfg.format,
                leaf.cfg.text_field, cache_dir, leaf.field)

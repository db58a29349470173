"""One file of records per format: jsonl (a cached index of line offsets), jsonl.gz (decompressed
once into the cache), parquet (whole row groups, cached) and ArrayRecord; what a record gives
(a document's text, a chat/pairs `Record`, or a `Skip` naming its file and line); and the cache
files they write (atomically). sources.py builds a source's documents from these readers."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import threading
import zlib
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from phi4_jax.store import atomic

FORMATS = ("jsonl", "jsonl.gz", "parquet", "arrayrecord")


RECORD_FORMATS = ("chat", "pairs")  # post-training records; the file type is from the extension


# pairs records: the fields read from parquet columns (one of the three forms of pairs.py)
PAIR_FIELDS = ("prompt", "messages", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids")


_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl.gz", ".json.gz": "jsonl.gz",
               ".parquet": "parquet", ".arrayrecord": "arrayrecord", ".array_record": "arrayrecord"}


class Skip(NamedTuple):
  """A record that gives no document. reason: malformed_json (not JSON) | missing_field (not an
  object with a string `text_field`) | invalid_utf8 (bytes that are not UTF-8, or JSON escapes
  such as a lone surrogate "\\ud800" that no UTF-8 text can hold) | empty (blank line, or text
  of only whitespace). Chat and pairs records add theirs (chat.py's conversation_item, pairs.py's
  pair_item): bad_messages, no_assistant, too_long, cut_long (turns cut off, the rest trained on),
  empty_prompt, empty_completion, same_completion, bad_ids."""
  reason: str
  where: str  # "path:line" (jsonl) or "path:row N" / "path:record N"


class Record(NamedTuple):
  """A chat or pairs record: its value (chat: the messages field; pairs: the record's fields as a
  dict) and where it is, for the skip reports of chat.py and pairs.py."""
  value: object
  where: str


def record_mode(fmt: str) -> str:
  """What a source's records hold: "text" (documents), "chat" or "pairs"."""
  return fmt if fmt in RECORD_FORMATS else "text"


class CacheError(OSError):
  """A cache file (line index, decompressed copy, token counts) that cannot be written."""


class _Unreadable(Exception):
  """Raised by a file reader: `place` is the file (and line or record) that failed."""

  def __init__(self, place: str, cause: BaseException, hint: str = ""):
    super().__init__(place)
    self.place, self.cause, self.hint = place, cause, hint


def _describe(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__} (no detail given)"


def _file_key(path: str, *extra: str) -> str:
  st = os.stat(path)
  text = "|".join([os.path.abspath(path), str(st.st_size), str(st.st_mtime_ns), *extra])
  return hashlib.sha1(text.encode()).hexdigest()[:20]


def atomic_write(path: str, write) -> None:
  """write(tmp_path) in store.atomic.replacing: readers never see a partial file, and a failed or
  interrupted write leaves nothing; an OSError of the write is a CacheError naming `path`."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic.replacing(path) as tmp:
      write(tmp)
  except OSError as e:
    raise CacheError(f"cannot write the cache file {path}: {_describe(e)} (config.data.cache_dir "
                     "or $PHI4_JAX_CACHE choose the cache)") from e


def load_npy(path: str) -> np.ndarray | None:
  """A cached array, or None if it is missing or unreadable (then it is rebuilt)."""
  try:
    return np.load(path)
  except FileNotFoundError:
    return None
  except (OSError, ValueError, EOFError) as e:
    logging.warning("cache file %s is unreadable (%s): rebuilding it", path, _describe(e))
    return None


def save_npy(path: str, array: np.ndarray) -> None:
  """np.save through atomic_write."""
  def write(tmp):
    with open(tmp, "wb") as f:
      np.save(f, array)
  atomic_write(path, write)


def _text_of(raw: bytes, text_field: str, where: str) -> str | Skip:
  """A record's bytes -> its document text, or why it has none."""
  try:
    text = raw.decode("utf-8-sig" if raw[:3] == b"\xef\xbb\xbf" else "utf-8")  # a BOM: not text
  except UnicodeDecodeError:
    return Skip("invalid_utf8", where)
  if not text.strip():  # a blank line (or record) holds no document, whatever the format
    return Skip("empty", where)
  if text_field:
    escaped = "\\u" in text  # only a JSON \u escape can give a lone surrogate
    try:
      obj = json.loads(text)
    except ValueError:
      return Skip("malformed_json", where)
    text = obj.get(text_field) if isinstance(obj, dict) else None
    if not isinstance(text, str):
      return Skip("missing_field", where)
    if escaped and not _encodable(text):
      return Skip("invalid_utf8", where)
  return text if text.strip() else Skip("empty", where)


def _record_of(raw: bytes, mode: str, field: str, where: str) -> Record | Skip:
  """A chat/pairs record's bytes -> Record (chat: obj[field]; pairs: the object), or a Skip."""
  try:
    text = raw.decode("utf-8-sig" if raw[:3] == b"\xef\xbb\xbf" else "utf-8")
  except UnicodeDecodeError:
    return Skip("invalid_utf8", where)
  if not text.strip():
    return Skip("empty", where)
  try:
    obj = json.loads(text)
  except ValueError:
    return Skip("malformed_json", where)
  if not isinstance(obj, dict):
    return Skip("missing_field", where)
  if mode == "chat":
    return Record(obj[field], where) if obj.get(field) is not None else Skip("missing_field", where)
  return Record(obj, where)


def _encodable(text: str) -> bool:
  """False for text with lone surrogates (no UTF-8 form; the tokenizer would replace them)."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


class JsonlFile:
  """One jsonl file; record i is line i + 1. `shown` is the path used in reports."""

  def __init__(self, path: str, text_field: str, cache_dir: str, shown: str | None = None,
               mode: str = "text"):
    self.path, self.text_field, self.shown, self.mode = path, text_field, shown or path, mode
    self._index_path = os.path.join(cache_dir, "index", _file_key(path) + ".npy")
    self._starts = None
    self._size = None  # the file's size when it was indexed

  def __getstate__(self):  # (worker processes reload the index from the cache)
    return {**self.__dict__, "_starts": None}

  def _offsets(self) -> np.ndarray:
    """int64 [n + 1]: byte offset of each line start, then the end of the file."""
    if self._starts is None:
      try:
        size = os.path.getsize(self.path)
      except OSError as e:
        raise _Unreadable(self.shown, e) from e
      if self._size is not None and size != self._size:
        raise _Unreadable(self.shown, EOFError(f"it has {size} bytes, {self._size} when indexed"),
                          "it changed while the run reads it")
      starts = load_npy(self._index_path)
      if starts is None or starts.ndim != 1 or not len(starts) or starts[-1] != size:
        starts = self._scan()  # missing, unreadable or not this file's
        save_npy(self._index_path, starts)
      self._starts, self._size = starts, int(starts[-1])
    return self._starts

  def _scan(self) -> np.ndarray:
    starts, base = [np.zeros(1, np.int64)], 0
    try:
      with open(self.path, "rb") as f:
        while chunk := f.read(1 << 26):
          starts.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10).astype(np.int64) + base + 1)
          base += len(chunk)
    except OSError as e:
      raise _Unreadable(self.shown, e) from e
    offsets = np.concatenate(starts)
    return offsets if offsets[-1] == base else np.append(offsets, base)

  def __len__(self) -> int:
    return len(self._offsets()) - 1

  def read(self, indices: list[int]) -> list[str | Skip]:
    offsets = self._offsets()
    out = []
    try:
      fd = os.open(self.path, os.O_RDONLY)
    except OSError as e:
      hint = "" if self.shown == self.path else f" (its decompressed copy {self.path})"
      raise _Unreadable(self.shown + hint, e, "it was indexed when the run started") from e
    try:
      for i in indices:
        start, end = int(offsets[i]), int(offsets[i + 1])
        try:
          raw = os.pread(fd, end - start, start)
        except OSError as e:
          raise _Unreadable(f"{self.shown}:{i + 1}", e) from e
        if len(raw) != end - start:
          raise _Unreadable(f"{self.shown}:{i + 1}", EOFError(
              f"read {len(raw)} of the line's {end - start} bytes at offset {start}"),
              "the file is shorter than when it was indexed: it changed while the run reads it")
        out.append(_text_of(raw, self.text_field, f"{self.shown}:{i + 1}") if self.mode == "text"
                   else _record_of(raw, self.mode, self.text_field, f"{self.shown}:{i + 1}"))
    finally:
      os.close(fd)
    return out


def _gunzipped(path: str, cache_dir: str) -> str:
  """The decompressed copy of a .jsonl.gz in the cache (made once; nothing left if it fails)."""
  target = os.path.join(cache_dir, "gunzip", _file_key(path) + ".jsonl")
  if os.path.exists(target):
    return target
  try:
    src = gzip.open(path, "rb")
  except OSError as e:
    raise _Unreadable(path, e) from e

  def write(tmp):
    lines = 0
    with open(tmp, "wb") as dst:
      while True:
        try:
          chunk = src.read1(1 << 20)  # read1: what decompressed before an error is written
        except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
          kind = "truncated" if isinstance(e, EOFError) else "corrupt"
          # a bad CRC shows at the member's end: then no line is to blame
          at = path if isinstance(e, gzip.BadGzipFile) else f"{path} (in line {lines + 1} of its text)"
          raise _Unreadable(at, e, f"a {kind} gzip file: replace it or drop it from the globs") from e
        if not chunk:
          return
        dst.write(chunk)
        lines += chunk.count(b"\n")

  with src:
    atomic_write(target, write)
  return target


class ParquetFile:
  """One parquet file; a record is a row. Row groups are decoded whole and kept (LRU of 4)."""

  def __init__(self, path: str, text_field: str, field: str = "text_field", mode: str = "text"):
    import pyarrow.parquet as pq
    self.path, self.text_field, self.mode = path, text_field, mode
    try:
      opened = pq.ParquetFile(path)
      meta = opened.metadata
      # top-level columns (the parquet schema's names are leaves: a list column's is "element")
      names = meta.schema.names if mode == "text" else opened.schema_arrow.names
    except Exception as e:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ...)
      raise _Unreadable(path, e, "not a readable parquet file (truncated or corrupt footer?)") from e
    self.columns = [text_field]
    if mode == "pairs":
      self.columns = [c for c in PAIR_FIELDS if c in names]
      if not self.columns:
        raise ValueError(f"{field}.format: 'pairs', but the parquet file {path} has none of the "
                         f"columns {', '.join(PAIR_FIELDS)} (columns: {names})")
    elif text_field not in names:
      raise ValueError(f"{field}.text_field: {text_field!r} is not a column of the parquet file "
                       f"{path} (columns: {names})")
    self.group_starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    self._lock, self._groups = threading.Lock(), OrderedDict()

  def __getstate__(self):
    return {**self.__dict__, "_lock": None, "_groups": None}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock(), _groups=OrderedDict())

  def __len__(self) -> int:
    return int(self.group_starts[-1])

  def _group(self, g: int, i: int) -> list:
    with self._lock:
      if g in self._groups:
        self._groups.move_to_end(g)
        return self._groups[g]
    import pyarrow.parquet as pq
    try:
      table = pq.ParquetFile(self.path).read_row_group(g, columns=self.columns)
      if self.mode == "pairs":  # a row: its non-null fields
        values = [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]
      else:
        values = table.column(0).to_pylist()
    except Exception as e:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ...)
      raise _Unreadable(f"{self.path}:row {i} (row group {g}, rows {self.group_starts[g]}.."
                        f"{self.group_starts[g + 1] - 1})", e) from e
    with self._lock:
      self._groups[g] = values
      while len(self._groups) > 4:
        self._groups.popitem(last=False)
    return values

  def read(self, indices: list[int]) -> list[str | Skip]:
    out = []
    for i in indices:
      g = int(np.searchsorted(self.group_starts, i, side="right")) - 1
      value = self._group(g, i)[i - self.group_starts[g]]
      where = f"{self.path}:row {i}"
      if self.mode != "text":
        out.append(Skip("missing_field", where) if value is None else Record(value, where))
      elif isinstance(value, bytes):
        out.append(_text_of(value, "", where))
      elif not isinstance(value, str):
        out.append(Skip("missing_field", where))
      else:
        out.append(value if value.strip() else Skip("empty", where))
    return out


class ArrayRecordFile:
  """One ArrayRecord file; records are JSON objects, or raw UTF-8 text when text_field is ""."""

  def __init__(self, path: str, text_field: str, mode: str = "text"):
    from grain.sources import ArrayRecordDataSource
    self.path, self.text_field, self.mode = path, text_field, mode
    try:
      self._records = ArrayRecordDataSource([path])
    except Exception as e:  # noqa: BLE001 (array_record raises RuntimeError, OSError, ...)
      raise _Unreadable(path, e, "not a readable ArrayRecord file (truncated or corrupt?)") from e

  def __len__(self) -> int:
    return len(self._records)

  def read(self, indices: list[int]) -> list[str | Skip]:
    try:
      raws = self._records.__getitems__(indices)
    except Exception as e:  # noqa: BLE001
      for i in indices:  # find the first record that fails, to name it
        try:
          self._records[i]
        except Exception as one:  # noqa: BLE001
          raise _Unreadable(f"{self.path}:record {i}", one) from one
      raise _Unreadable(f"{self.path}:records {indices[0]}..", e) from e
    if self.mode != "text":
      return [_record_of(raw, self.mode, self.text_field, f"{self.path}:record {i}")
              for i, raw in zip(indices, raws)]
    return [_text_of(raw, self.text_field, f"{self.path}:record {i}") for i, raw in zip(indices, raws)]


def detect_format(path: str) -> str | None:
  for ext, fmt in sorted(_EXTENSIONS.items(), key=lambda kv: -len(kv[0])):
    if path.endswith(ext):
      return fmt
  return None

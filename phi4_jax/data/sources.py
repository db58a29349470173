"""Document sources: the files matched by globs, read lazily by record index, each file through
its formats.py reader.

jsonl is random-access through a cached index of line offsets; jsonl.gz is decompressed once
into the cache (gzip cannot seek); parquet reads whole row groups (cached) and exposes them as
shuffle blocks; ArrayRecord is random-access natively. A record that cannot give a document
(malformed JSON, missing text field, invalid UTF-8, empty text) comes back as a `Skip` naming
its file and line, so the run goes on and reports it. A file that cannot be read at all
(truncated or corrupt gzip, parquet or ArrayRecord, permission denied, deleted or changed after
it was indexed) raises `SourceError` naming the source, its config field, the file and, where
known, the line or record. Files are opened, indexed (jsonl), decompressed (jsonl.gz) or have
their footer read (parquet, ArrayRecord) when the Source is built, so most such errors surface
while the train iterator is built, before any step; corruption inside a parquet row group or an
ArrayRecord chunk shows when it is read (at build time too for a source whose unique tokens are
measured, which reads every record; else when training reaches it). Cache files are written atomically, and a failed
write leaves no temporary file behind.

`format` "chat" and "pairs" (post-training) name what the records hold, not the file type (that
comes from each file's extension, as for ""): a record is then a `Record` of its `text_field`
value (chat: the `messages` list) or of the whole JSON object (pairs), checked by chat.py and
pairs.py, which skip malformed ones with the same `Skip` places.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os

import numpy as np

from phi4_jax.data import corpus
from phi4_jax.data.formats import (FORMATS, RECORD_FORMATS, ArrayRecordFile, CacheError, JsonlFile,
                                   ParquetFile, Record, Skip, _describe, _file_key, _gunzipped,
                                   _Unreadable, detect_format, record_mode)

__all__ = ["Record", "Skip", "Source", "SourceError", "count_skip", "open_source", "resolve_globs"]
from phi4_jax.data.planner import Leaf

class SourceError(ValueError):
  """A source file that cannot be read: names the source, its config field, the file and, where
  known, the line or record."""


_LOGGED_SKIPS = 20  # per source: the first ones are logged with their place, later ones only counted


def count_skip(counts: dict[str, int], source: str, skip: Skip, during: str = "") -> None:
  """Counts a skipped record by reason, and logs where it is while few have been skipped.
  `during` names a pass other than training's reads (its counts are not the run's progress)."""
  counts[skip.reason] = counts.get(skip.reason, 0) + 1
  total = sum(counts.values())
  if total <= _LOGGED_SKIPS:
    logging.warning("source %s: %sskipped %s (%s), %d skipped so far", source,
                    f"{during}: " if during else "", skip.where, skip.reason, total)
    if total == _LOGGED_SKIPS:
      logging.warning("source %s: %sfurther skipped records are counted, not logged", source,
                      f"{during}: " if during else "")


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
  """The documents of one leaf source: records of its files in sorted-path order.

  Every file is opened (and indexed or decompressed where needed) here, so an unreadable file
  fails the construction; a read error later (a file deleted or changed since, a corrupt row
  group) is a SourceError too, naming the source, file and record.
  """

  def __init__(self, name: str, files: list[str], fmt: str, text_field: str, cache_dir: str,
               field: str):
    self.name, self.files, self.text_field, self.field = name, files, text_field, field
    self.mode = mode = record_mode(fmt)
    self.readers, keys = [], []
    for path in files:
      kind = detect_format(path) if mode != "text" or not fmt else fmt
      if kind not in FORMATS:
        raise ValueError(f"{field}: unknown format {kind or '(none)'!r} for {path} "
                         f"(known: {', '.join(FORMATS + RECORD_FORMATS)}; set {field}.format)")
      with self._reading(path):
        with open(path, "rb"):  # readable at all (a cached index would not notice)
          pass
        if kind == "jsonl":
          reader = JsonlFile(path, text_field, cache_dir, mode=mode)
        elif kind == "jsonl.gz":
          reader = JsonlFile(_gunzipped(path, cache_dir), text_field, cache_dir, shown=path, mode=mode)
        elif kind == "parquet":
          reader = ParquetFile(path, text_field, field, mode)
        else:
          reader = ArrayRecordFile(path, text_field, mode)
        len(reader)  # builds a jsonl index now
        keys.append(_file_key(path))
      self.readers.append(reader)
    self.file_starts = np.cumsum([0] + [len(r) for r in self.readers])
    self.fingerprint = hashlib.sha1("|".join([fmt, text_field] + keys).encode()).hexdigest()[:20]

  @contextlib.contextmanager
  def _reading(self, path: str):
    """Turns an error reading `path` into a SourceError naming this source and the place."""
    who = f"source {self.name!r} ({self.field})"
    try:
      yield
    except SourceError:
      raise
    except CacheError as e:
      raise CacheError(f"{who}: {e}") from e
    except _Unreadable as e:
      hint = f"; {e.hint}" if e.hint else ""
      raise SourceError(f"{who}: cannot read {e.place}: {_describe(e.cause)}{hint}") from e.cause
    except Exception as e:  # noqa: BLE001 (OSError, EOFError, library errors: all name the file)
      if isinstance(e, ValueError) and str(e).startswith(self.field):
        raise  # already names the field (a missing parquet column)
      raise SourceError(f"{who}: cannot read {path}: {_describe(e)}") from e

  def __len__(self) -> int:
    return int(self.file_starts[-1])

  def block_starts(self) -> np.ndarray | None:
    """Record index where each parquet row group starts (shuffle blocks), or None (uniform shuffle)."""
    if not any(isinstance(r, ParquetFile) for r in self.readers):
      return None
    starts = [base + (r.group_starts[:-1] if isinstance(r, ParquetFile) else np.arange(len(r)))
              for base, r in zip(self.file_starts[:-1], self.readers)]
    return np.concatenate(starts).astype(np.int64)

  def read(self, indices) -> list[str | Record | Skip]:
    """Texts (chat/pairs: Records) or Skips of records `indices`, in that order; each file is
    opened once."""
    indices = np.asarray(indices, np.int64)
    files = np.searchsorted(self.file_starts, indices, side="right") - 1
    out: list = [None] * len(indices)
    for f in np.unique(files):
      where = np.flatnonzero(files == f)
      local = (indices[where] - self.file_starts[f]).tolist()
      with self._reading(self.files[f]):
        texts = self.readers[f].read(local)
      for k, text in zip(where.tolist(), texts):
        out[k] = text
    return out


def open_source(leaf: Leaf, cache_dir: str) -> Source:
  """The documents of a leaf of config.data.sources (`corpus:<name>` globs build the corpus)."""
  globs = corpus.resolve(leaf.cfg.globs, cache_dir)
  return Source(leaf.name, resolve_globs(globs, f"{leaf.field}.globs"), leaf.cfg.format,
                leaf.cfg.text_field, cache_dir, leaf.field)

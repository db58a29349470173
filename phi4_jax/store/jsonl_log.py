"""Resumable JSONL logs: one line per finished item, appended and synced as items finish.

A rerun after a kill reads the keys already logged and skips them; a last line cut short by the
kill is dropped first. Multi-process runs write one log per process (`part_path`) and merge them.
"""

from __future__ import annotations

import gzip
import json
import os

from phi4_jax.store import atomic


def read(path: str, key: str, repair: bool = True) -> dict[object, dict]:
  """{record[key]: record} of the complete lines of `path` (none if it does not exist). A last line
  cut short by a kill is removed from the file (repair=False: only ignored, for another process's
  log, which may be mid-append)."""
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    data = f.read()
  if repair and data and not data.endswith(b"\n"):
    with open(path, "wb") as f:
      f.write(data[:data.rfind(b"\n") + 1])
  records = {}
  for line in (data if data.endswith(b"\n") else data[:data.rfind(b"\n") + 1]).splitlines():
    try:
      record = json.loads(line)
      records[record[key]] = record
    except (ValueError, KeyError, TypeError):
      continue
  return records


def objects(path: str):
  """(line number, object) of each non-blank line of a JSONL input file (.gz: gzip-compressed):
  every input file of the commands is read here. ValueError naming `path:line` for a line that is
  not UTF-8 or not a JSON object."""
  with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{n}: expected a JSON object")
      yield n, record


def append(path: str, records: list[dict]) -> None:
  """Append records (one line each) and sync them to disk."""
  if not records:
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def write_atomic(path: str, records: list[dict]) -> None:
  """Replace `path` by these records in one rename (readers never see half a file)."""
  atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def part_path(path: str, process_index: int, process_count: int) -> str:
  """This process's log of a run writing `path` (the path itself in a one-process run)."""
  return path if process_count == 1 else f"{path}.part-{process_index:05d}-of-{process_count:05d}"

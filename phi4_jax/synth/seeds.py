"""Seed records for the synthetic dataset types, from any file the data layer reads.

--seeds is one or more comma-separated globs of .jsonl, .jsonl.gz, .parquet (every column) or
ArrayRecord files (JSON objects, or raw UTF-8 text as {"text"}), read in sorted path order, or an
embedded question family (corpus:parity, corpus:exercises, corpus:mixed: data/families.py's search
splits, num_seeds of them); a recipe resolves `stage:<name>` to that stage's output before it gets
here. Each seed is a dict with an `id` (its own `id` or `task_id`, else `<file name>:<line or row>`) and `seed_id` (the same); what
else it needs depends on the type (`text`, `code` and `tests`, `question` and `answer`, ...).
"""

from __future__ import annotations

import glob
import json
import os

from phi4_jax.data import families
from phi4_jax.data.formats import detect_format
from phi4_jax.store import jsonl_log


def files(spec: str) -> list[str]:
  """The files of comma-separated globs, each glob matching at least one readable format."""
  found = []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    matched = sorted(glob.glob(os.path.expanduser(os.path.expandvars(part))))
    if not matched:
      raise ValueError(f"--seeds: {part!r} matches no file")
    for path in matched:
      if detect_format(path) is None:
        raise ValueError(f"--seeds: {path}: not .jsonl, .jsonl.gz, .parquet or .arrayrecord")
      found.append(path)
  if not found:
    raise ValueError("--seeds: no file given")
  return found


def _parquet(path: str):
  import pyarrow.parquet as pq
  for n, record in enumerate(pq.read_table(path).to_pylist()):
    yield n, record


def _arrayrecord(path: str):
  from grain.sources import ArrayRecordDataSource
  source = ArrayRecordDataSource([path])
  for n in range(len(source)):
    raw = source[n]
    try:
      record = json.loads(raw)
    except ValueError:
      record = raw.decode("utf-8", errors="replace")
    yield n, record if isinstance(record, dict) else {"text": str(record)}


READERS = {"jsonl": jsonl_log.objects, "jsonl.gz": jsonl_log.objects, "parquet": _parquet, "arrayrecord": _arrayrecord}


def read(spec: str, limit: int = 0) -> list[dict]:
  """The seeds of `spec` (the first `limit`, 0 = all), each with its `id` and `seed_id`."""
  if spec in families.QUESTIONS:
    if limit < 1:
      raise ValueError(f"--seeds={spec}: an embedded question family needs num_seeds >= 1")
    return [{**q, "seed_id": q["id"], "seed_file": spec} for q in families.questions(spec, limit)]
  seeds = []
  for path in files(spec):
    for n, record in READERS[detect_format(path)](path):
      seed_id = str(record.get("id") or record.get("task_id") or f"{os.path.basename(path)}:{n}")
      seeds.append({**record, "id": seed_id, "seed_id": seed_id, "seed_file": path})
      if limit and len(seeds) >= limit:
        return seeds
  if not seeds:
    raise ValueError(f"--seeds: {spec!r}: the files hold no records")
  return seeds


def field(seed: dict, names: tuple[str, ...], type_name: str) -> str:
  """The seed's first non-empty string field among `names`; ValueError naming the seed and its file."""
  for name in names:
    value = seed.get(name)
    if isinstance(value, str) and value.strip():
      return value
  raise ValueError(f"{seed.get('seed_file', '?')}: seed {seed['id']}: the {type_name} type needs a "
                   f"non-empty {' or '.join(names)} field")

"""The documents a curation run reads: its sources' files, each file's records as texts, and the
clean copies it writes in each file's own format.

--input=GLOB is one source named `input`; --sources=FILE.py:PRESET reads a stage config's
config.data.sources (every leaf source; nested mixtures flattened as the planner does). Files are
read one at a time (an unreadable one is named and, with on_unreadable="skip", left out while the
rest continue). A document's global place is (source order, file order, record index): the order
the deterministic rules (which duplicate is kept) go by.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from phi4_jax import configs
from phi4_jax.data import config as data_config
from phi4_jax.data import corpus, decontam, planner
from phi4_jax.data.formats import FORMATS, detect_format
from phi4_jax.data.sources import Source, resolve_globs

READ_BATCH = 512  # records read together


@dataclasses.dataclass(frozen=True)
class File:
  source: str  # the source's name
  index: int  # the file's place among all files of the run
  path: str
  fmt: str  # its format (jsonl, jsonl.gz, parquet, arrayrecord)
  text_field: str
  mode_format: str  # the source's `format` field ("" = from the extension; chat, pairs)
  field: str  # the source's config field, for messages


def leaves_of(input_glob: str, sources_spec: str) -> list[planner.Leaf]:
  """The run's sources: --input as one leaf `input`, or a stage config's leaves."""
  if input_glob:
    return [planner.Leaf("input", "--input", 1.0, data_config.source(input_glob, 1.0))]
  config = configs.load(sources_spec)
  if "data" not in config:
    raise ValueError(f"--sources={sources_spec}: not a stage config with data.sources")
  return planner.leaves(config.data.sources)


def files_of(leaves: list[planner.Leaf]) -> list[File]:
  """Every file of every source, in order (`corpus:<name>` from the data cache, corpus.cache_dir);
  two files of one source with one name are refused (their clean copies would collide)."""
  out = []
  for leaf in leaves:
    paths = resolve_globs(corpus.resolve(leaf.cfg.globs, corpus.cache_dir()), f"{leaf.field}.globs")
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) != len(names):
      raise ValueError(f"{leaf.field}.globs: two files named alike ({names}): their clean copies would collide")
    for path in paths:
      fmt = leaf.cfg.format if leaf.cfg.format in FORMATS else detect_format(path)
      out.append(File(leaf.name, len(out), path, fmt or "", leaf.cfg.text_field, leaf.cfg.format, leaf.field))
  return out


def texts(file: File, cache: str):
  """(record index, text or None) of every record of the file; None: a record without text (a
  malformed line, a missing field), which the run keeps as it is and counts as unreadable."""
  source = Source(file.source, [file.path], file.mode_format, file.text_field, cache, file.field)
  n = len(source)
  for begin in range(0, n, READ_BATCH):
    end = min(n, begin + READ_BATCH)
    for i, value in zip(range(begin, end), source.read(range(begin, end))):
      yield i, decontam.document_text(value)


def copy_kept(file: File, target: str, removed: set[int]) -> None:
  """The file's records but `removed`, in its format, written to `target`."""
  decontam.copy_kept(file.path, file.fmt, target, removed)


def config_identity(leaves: list[planner.Leaf]) -> list[dict]:
  return [{"name": leaf.name, **ml_collections.ConfigDict(leaf.cfg).to_dict()} for leaf in leaves]


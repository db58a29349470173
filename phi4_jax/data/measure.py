"""Measuring a source: the token count of every document, cached beside the file indexes.

A document's count includes its `<|endoftext|>` separator, so a source's unique tokens are the
sum over its documents and equal the tokens one epoch puts in packed rows. The length filters
(`min_doc_tokens` / `max_doc_tokens`) pick the documents in play from these counts.
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from phi4_jax.data import corpus
from phi4_jax.data.planner import Leaf, PlanError, leaves
from phi4_jax.data.sources import Skip, Source, count_skip, load_npy, open_source, save_npy
from phi4_jax.tokenizer import Phi4Tokenizer

_VERSION = "1"  # bump when counting changes


def doc_lengths(source: Source, cache_dir: str, threads: int = 2, batch: int = 256) -> np.ndarray:
  """int32 [len(source)]: tokens of each document plus its separator; 0 for skipped records."""
  path = os.path.join(cache_dir, "measure", f"{source.fingerprint}-v{_VERSION}.npy")
  cached = load_npy(path)
  if cached is not None and cached.shape == (len(source),):
    return cached
  tokenizer = Phi4Tokenizer()
  lengths = np.zeros(len(source), np.int32)
  skipped: dict[str, int] = {}
  for start in range(0, len(source), batch):
    indices = range(start, min(start + batch, len(source)))
    keep, docs = [], []
    for i, t in zip(indices, source.read(indices)):
      if isinstance(t, Skip):
        count_skip(skipped, source.name, t, during="measuring")
      else:
        keep.append(i)
        docs.append(t)
    ids = tokenizer.encode_ordinary_batch(docs, threads)
    lengths[keep] = [len(x) + 1 for x in ids]
  if skipped:  # this pass reads every record once; training counts its own reads (progress())
    logging.warning("source %s: measuring its %d records found %d documents; skipped %s",
                    source.name, len(source), int((lengths > 0).sum()), skipped)
  save_npy(path, lengths)
  return lengths


def kept_records(lengths: np.ndarray, min_doc_tokens: int, max_doc_tokens: int) -> np.ndarray:
  """Record ids whose document (separator excluded) has min..max tokens (max 0 = no limit)."""
  doc = lengths.astype(np.int64) - 1
  keep = (lengths > 0) & (doc >= min_doc_tokens)
  if max_doc_tokens:
    keep &= doc <= max_doc_tokens
  return np.flatnonzero(keep)


def documents_in_play(leaf: Leaf, source: Source,
                      cache_dir: str) -> tuple[float, np.ndarray | None]:
  """(unique tokens counted from the files, or 0 when declared and unfiltered; record ids passing
  the length filter, or None = all records)."""
  cfg = leaf.cfg
  filtered = cfg.min_doc_tokens > 0 or cfg.max_doc_tokens > 0
  if cfg.unique_tokens > 0 and not filtered:
    return 0.0, None
  lengths = doc_lengths(source, cache_dir)
  records = kept_records(lengths, cfg.min_doc_tokens, cfg.max_doc_tokens) if filtered else None
  unique = float(lengths.sum() if records is None else lengths[records].sum())
  if filtered and not len(records):
    raise PlanError(f"{leaf.field}: no document of source {leaf.name!r} has "
                    f"{cfg.min_doc_tokens}..{cfg.max_doc_tokens or 'any'} tokens")
  return unique, records


def unique_tokens(config: ml_collections.ConfigDict) -> dict[str, float]:
  """For the planner: unique tokens of each source whose config leaves them 0 (counted once, then
  read from the cache); sources that declare theirs are not opened."""
  cache_dir = corpus.cache_dir(config.data)
  return {leaf.name: documents_in_play(leaf, open_source(leaf, cache_dir), cache_dir)[0]
          for leaf in leaves(config.data.sources) if leaf.cfg.unique_tokens <= 0}

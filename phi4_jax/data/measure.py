"""Measuring a source: the token count of every document, cached beside the file indexes.

A document's count includes its `<|endoftext|>` separator, so a source's unique tokens are the
sum over its documents and equal the tokens one epoch puts in packed rows.
"""

from __future__ import annotations

import collections
import logging
import os

import numpy as np

from phi4_jax.data.sources import Skip, Source, atomic_write
from phi4_jax.tokenizer import Phi4Tokenizer

_VERSION = "1"  # bump when counting changes


def doc_lengths(source: Source, cache_dir: str, threads: int = 2, batch: int = 256) -> np.ndarray:
  """int32 [len(source)]: tokens of each document plus its separator; 0 for skipped records."""
  path = os.path.join(cache_dir, "measure", f"{source.fingerprint}-v{_VERSION}.npy")
  if os.path.exists(path):
    return np.load(path)
  tokenizer = Phi4Tokenizer()
  lengths = np.zeros(len(source), np.int32)
  skipped: collections.Counter = collections.Counter()
  for start in range(0, len(source), batch):
    indices = range(start, min(start + batch, len(source)))
    texts = source.read(indices)
    keep = [i for i, t in zip(indices, texts) if not isinstance(t, Skip)]
    for t in texts:
      if isinstance(t, Skip):
        skipped[t.reason] += 1
        if sum(skipped.values()) <= 20:
          logging.warning("source %s: skipped %s (%s)", source.name, t.where, t.reason)
    ids = tokenizer.encode_ordinary_batch([t for t in texts if not isinstance(t, Skip)], threads)
    lengths[keep] = [len(x) + 1 for x in ids]
  if skipped:
    logging.warning("source %s: measured %d documents, skipped %s", source.name,
                    int((lengths > 0).sum()), dict(skipped))
  def write(tmp):
    with open(tmp, "wb") as f:
      np.save(f, lengths)
  atomic_write(path, write)
  return lengths


def kept_records(lengths: np.ndarray, min_doc_tokens: int, max_doc_tokens: int) -> np.ndarray:
  """Record ids whose document (separator excluded) has min..max tokens (max 0 = no limit)."""
  doc = lengths.astype(np.int64) - 1
  keep = (lengths > 0) & (doc >= min_doc_tokens)
  if max_doc_tokens:
    keep &= doc <= max_doc_tokens
  return np.flatnonzero(keep)

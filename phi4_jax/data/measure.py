"""Measuring a source: the token count of every document, cached beside the file indexes.

A document's count includes its `<|endoftext|>` separator, so a source's unique tokens are the
sum over its documents and equal the tokens one epoch puts in packed rows.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from phi4_jax.data.sources import Skip, Source, count_skip, save_npy
from phi4_jax.tokenizer import Phi4Tokenizer

_VERSION = "1"  # bump when counting changes


def doc_lengths(source: Source, cache_dir: str, threads: int = 2, batch: int = 256) -> np.ndarray:
  """int32 [len(source)]: tokens of each document plus its separator; 0 for skipped records."""
  path = os.path.join(cache_dir, "measure", f"{source.fingerprint}-v{_VERSION}.npy")
  if os.path.exists(path):
    return np.load(path)
  tokenizer = Phi4Tokenizer()
  lengths = np.zeros(len(source), np.int32)
  skipped: dict[str, int] = {}
  for start in range(0, len(source), batch):
    indices = range(start, min(start + batch, len(source)))
    keep, docs = [], []
    for i, t in zip(indices, source.read(indices)):
      if isinstance(t, Skip):
        count_skip(skipped, source.name, t)
      else:
        keep.append(i)
        docs.append(t)
    ids = tokenizer.encode_ordinary_batch(docs, threads)
    lengths[keep] = [len(x) + 1 for x in ids]
  if skipped:
    logging.warning("source %s: measured %d documents, skipped %s", source.name,
                    int((lengths > 0).sum()), skipped)
  save_npy(path, lengths)
  return lengths


def kept_records(lengths: np.ndarray, min_doc_tokens: int, max_doc_tokens: int) -> np.ndarray:
  """Record ids whose document (separator excluded) has min..max tokens (max 0 = no limit)."""
  doc = lengths.astype(np.int64) - 1
  keep = (lengths > 0) & (doc >= min_doc_tokens)
  if max_doc_tokens:
    keep &= doc <= max_doc_tokens
  return np.flatnonzero(keep)

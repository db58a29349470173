"""The order in which a source's documents are visited: shuffled anew each epoch, O(1) memory.

Visit i belongs to epoch i // n and is the (i % n)-th document of that epoch's permutation, so a
run that stops inside an epoch (a fractional planned epoch) has read a deterministic subset: the
first documents of that epoch's order. Sources with shuffle blocks (parquet row groups) permute
the blocks, then the documents inside each block, so consecutive visits share a row group.

The permutation is a keyed 4-round Feistel network with cycle walking, vectorized in numpy and
computed for chunks of visits on demand: no epoch's order is ever materialized.

Not grain's `MapDataset.shuffle` (index_shuffle, seed + epoch per repeated epoch): it permutes one
flat index range and has no block shuffle (`WindowShuffleMapDataset` permutes inside fixed-size
windows, never the windows), so row groups could not stay together; and a different permutation
would send checkpoints written before it (visit index + tokens into a batch) to other documents.
"""

from __future__ import annotations

import zlib

import numpy as np

_MASK64 = (1 << 64) - 1
_MULT = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 4096  # visits whose order is computed (and cached) together


def _mix(z: int) -> int:
  """splitmix64's finalizer on a Python int."""
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return z ^ (z >> 31)


def _seed(*parts: int) -> int:
  z = 0
  for p in parts:
    z = _mix((z ^ p) + 0x9E3779B97F4A7C15 & _MASK64)
  return z


def permute(j: np.ndarray, n: int, seed: int) -> np.ndarray:
  """The images of indices j (all < n) under the permutation of [0, n) keyed by seed.

  Feistel rounds on the smallest power-of-two domain holding n (halves of unequal size when its
  bit count is odd), cycle-walking values that land outside [0, n).
  """
  bits = max(1, (n - 1).bit_length())
  keys = [np.uint64(_seed(seed, r)) for r in range(4)]

  def rounds(x):
    lbits, rbits = bits // 2, bits - bits // 2
    left, right = x >> np.uint64(rbits), x & np.uint64((1 << rbits) - 1)
    for k in keys:
      f = ((right ^ k) * _MULT) >> np.uint64(64 - lbits) if lbits else np.zeros_like(right)
      left, right, lbits, rbits = right, left ^ f, rbits, lbits
    return (left << np.uint64(rbits)) | right

  out = rounds(np.asarray(j, np.uint64))
  while (outside := out >= np.uint64(n)).any():
    out[outside] = rounds(out[outside])
  return out.astype(np.int64)


class EpochOrder:
  """Visit indices -> record indices of a source.

  records: record ids of the documents in play (e.g. those passing a length filter), or None for
    all `num_records` records. block_starts: sorted positions (into the documents in play) where
    shuffle blocks start, or None for a uniform shuffle.
  """

  def __init__(self, num_records: int, seed: int, name: str, records: np.ndarray | None = None,
               block_starts: np.ndarray | None = None):
    self.records = records
    self.n = int(num_records if records is None else len(records))
    if self.n <= 0:
      raise ValueError(f"source {name!r} has no documents to visit")
    self._base_seed = _seed(seed, zlib.crc32(name.encode()))
    self._blocks = None
    self._chunks: dict[int, np.ndarray] = {}
    if block_starts is not None and len(block_starts) > 1:
      self._blocks = np.append(np.asarray(block_starts, np.int64), self.n)

  def _positions(self, epoch: int, j: np.ndarray) -> np.ndarray:
    seed = _seed(self._base_seed, epoch)
    if self._blocks is None:
      return permute(j, self.n, seed)
    sizes = np.diff(self._blocks)
    order = permute(np.arange(len(sizes)), len(sizes), seed)
    starts = np.concatenate([[0], np.cumsum(sizes[order])[:-1]])
    k = np.searchsorted(starts, j, side="right") - 1
    out = np.empty(len(j), np.int64)
    for slot in np.unique(k):
      at, block = k == slot, int(order[slot])
      inner = permute(j[at] - starts[slot], int(sizes[block]), _seed(seed, block))
      out[at] = self._blocks[block] + inner
    return out

  def _chunk(self, c: int) -> np.ndarray:
    """Record ids of visits [c * _CHUNK, (c + 1) * _CHUNK), cached (a few chunks)."""
    cached = self._chunks.get(c)
    if cached is None:  # threads may race here; they compute the same values
      visits = np.arange(c * _CHUNK, (c + 1) * _CHUNK, dtype=np.int64)
      epochs, j = np.divmod(visits, self.n)
      pos = np.empty(len(visits), np.int64)
      for epoch in np.unique(epochs):
        at = epochs == epoch
        pos[at] = self._positions(int(epoch), j[at])
      cached = pos if self.records is None else self.records[pos]
      self._chunks = {**dict(list(self._chunks.items())[-3:]), c: cached}
    return cached

  def __call__(self, start: int, end: int) -> np.ndarray:
    """int64 record ids of visits start..end-1."""
    if end <= start:
      return np.zeros(0, np.int64)
    parts = [self._chunk(c) for c in range(start // _CHUNK, (end - 1) // _CHUNK + 1)]
    offset = start - (start // _CHUNK) * _CHUNK
    return np.concatenate(parts)[offset:offset + end - start]

  def __getstate__(self):
    return {**self.__dict__, "_chunks": {}}

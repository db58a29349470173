"""Packing one source's token stream into rows of `seq_len` (concatenate, then split).

Documents (each ending in `<|endoftext|>`) are laid end to end and cut every `seq_len` tokens, so
no token is padded away; a document cut by a row's end continues at the start of that source's
next row. In a row, `segment_ids` number its documents 1..k, `positions` restart at 0 for each,
`loss_mask` is 1 on real tokens and `source_ids` holds the source's id. Only a source's last
row can be short: it is padded with segment 0, position 0, loss_mask 0 and source id -1.

Not grain's `ConcatThenSplitIterDataset`: its rows are the same (segments, positions restarting in
each piece), but one parent element is one segment, so the tokenized batches would have to become
one grain element per document, and its per-element Python work packs several times slower than
this packer (benchmarks/README.md). FirstFit/BestFit packing pads
instead of continuing a document into the next row.
"""

from __future__ import annotations

import collections

import grain
import numpy as np

from phi4_jax.data.sources import Skip, count_skip

ROW_FIELDS = ("tokens", "segment_ids", "positions", "loss_mask", "source_ids")
PAD_SOURCE_ID = -1


def make_row(tokens: np.ndarray, doc_ids: np.ndarray, seq_len: int, source_id: int,
             pad_id: int) -> dict[str, np.ndarray]:
  """A row from n <= seq_len tokens and their (non-decreasing) document ids, padded to seq_len."""
  n = len(tokens)
  starts = np.ones(n, bool)
  starts[1:] = doc_ids[1:] != doc_ids[:-1]
  idx = np.arange(n, dtype=np.int32)
  row = {name: np.zeros(seq_len, np.int32) for name in ROW_FIELDS}
  row["tokens"][:n], row["tokens"][n:] = tokens, pad_id
  row["segment_ids"][:n] = np.cumsum(starts, dtype=np.int32)
  row["positions"][:n] = idx - np.maximum.accumulate(np.where(starts, idx, 0))
  row["loss_mask"][:n] = 1
  row["source_ids"][:n], row["source_ids"][n:] = source_id, PAD_SOURCE_ID
  return row


class RowPacker:
  """Buffers documents and cuts rows; `pending` tokens wait for the next row."""

  def __init__(self, seq_len: int, source_id: int, pad_id: int):
    self.seq_len, self.source_id, self.pad_id = seq_len, source_id, pad_id
    self._tokens = np.zeros(0, np.int32)
    self._doc_ids = np.zeros(0, np.int64)
    self._next_doc = 0

  @property
  def pending(self) -> int:
    return len(self._tokens)

  def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
    """Appends documents: `tokens` is their concatenation, `lengths` their sizes."""
    doc_ids = np.repeat(np.arange(self._next_doc, self._next_doc + len(lengths)), lengths)
    self._next_doc += len(lengths)
    self._tokens = np.concatenate([self._tokens, tokens])
    self._doc_ids = np.concatenate([self._doc_ids, doc_ids])

  def drop(self, n: int) -> None:
    """Forgets the first n pending tokens (already emitted before a checkpoint)."""
    self._tokens, self._doc_ids = self._tokens[n:], self._doc_ids[n:]

  def pop(self, allow_short: bool = False) -> dict[str, np.ndarray] | None:
    """The next full row, or (allow_short) a padded last row; None if not enough tokens."""
    n = self.seq_len if self.pending >= self.seq_len else (self.pending if allow_short else 0)
    if n == 0:
      return None
    row = make_row(self._tokens[:n], self._doc_ids[:n], self.seq_len, self.source_id, self.pad_id)
    self.drop(n)
    return row


class RowStream(grain.DatasetIterator):
  """What the mixer reads of a source's row iterator (this module's, and fitpack's): the real
  tokens emitted, whether it has run dry, and its read counters."""

  _tokens: int
  _exhausted: bool
  _counters: dict

  @staticmethod
  def _zero_counters() -> dict:
    return {"docs": 0, "visits_end": 0, "skipped": {}}

  @property
  def tokens(self) -> int:
    return self._tokens

  @property
  def exhausted(self) -> bool:
    return self._exhausted

  @property
  def counters(self) -> dict:
    """{"docs", "visits_end", "skipped": {reason: n}} of every batch handed to the packer so far
    (those whose skips were logged), whether or not all its tokens are in emitted rows yet."""
    return copy_counters(self._counters)


class PackedRowsIterator(RowStream):
  """Rows of one source from a grain iterator of tokenized document batches.

  Parent elements: {"tokens": int32 [n], "lengths": int32 [docs], "visits_end": global visit
  index after the batch, "skipped": [(reason, where)]}. The state is the parent's state before
  the oldest batch still holding unemitted tokens, plus how many of its tokens were emitted, so a
  restore re-reads that batch and continues mid-batch exactly.
  """

  def __init__(self, parent: grain.DatasetIterator, name: str, source_id: int, seq_len: int,
               pad_id: int):
    super().__init__(parent)
    self.name = name
    self._packer = RowPacker(seq_len, source_id, pad_id)
    self._batches = collections.deque()  # (parent state before it, its token count, counters before)
    self._emitted_in_first = 0  # tokens of the oldest buffered batch already in emitted rows
    self._counters = self._zero_counters()
    self._tokens = 0  # real tokens in emitted rows
    self._exhausted = False

  def _pull(self) -> bool:
    """Adds the parent's next batch to the packer; False when the parent is exhausted."""
    state = self._parent.get_state()
    try:
      batch = next(self._parent)
    except StopIteration:
      return False
    self._batches.append((state, len(batch["tokens"]), copy_counters(self._counters)))
    self._packer.add(batch["tokens"], batch["lengths"])
    self._counters["docs"] += len(batch["lengths"])
    self._counters["visits_end"] = int(batch["visits_end"])
    for skip in batch["skipped"]:
      count_skip(self._counters["skipped"], self.name, Skip(*skip))
    return True

  def __next__(self) -> dict[str, np.ndarray]:
    if self._exhausted:
      raise StopIteration
    while self._packer.pending < self._packer.seq_len and self._pull():
      pass
    row = self._packer.pop(allow_short=True)
    if row is None:
      self._exhausted = True
      raise StopIteration
    n = int(row["loss_mask"].sum())
    self._tokens += n
    self._emitted_in_first += n
    while self._batches and self._emitted_in_first >= self._batches[0][1]:
      self._emitted_in_first -= self._batches.popleft()[1]
    return row

  def get_state(self) -> dict:
    """`counters` are those before the oldest buffered batch (a restore re-reads it, which
    counts it again); `read` is `counters` now, for reports (states without it, written before
    it was added, restore the same)."""
    if self._batches:
      parent, counters = self._batches[0][0], self._batches[0][2]
    else:
      parent, counters = self._parent.get_state(), self._counters
    return {"parent": parent, "skip_tokens": self._emitted_in_first, "counters": copy_counters(counters),
            "read": copy_counters(self._counters), "tokens": self._tokens, "exhausted": self._exhausted}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._packer = RowPacker(self._packer.seq_len, self._packer.source_id, self._packer.pad_id)
    self._batches.clear()
    self._counters = copy_counters(state["counters"])
    self._tokens, self._exhausted = state["tokens"], state["exhausted"]
    self._emitted_in_first = 0
    skip = state["skip_tokens"]
    if skip:
      if not self._pull():
        raise ValueError(f"source {self.name}: checkpoint points past the end of its data")
      self._packer.drop(skip)
      self._emitted_in_first = skip


def copy_counters(counters: dict) -> dict:
  return {**counters, "skipped": dict(counters["skipped"])}

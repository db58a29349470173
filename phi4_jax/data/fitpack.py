"""Post-training packing: whole conversations (SFT) or whole pairs (DPO) into rows, first fit.

Pretraining cuts its token stream every seq_len tokens (packing.py); here an item (a
conversation, or a pair's two sequences) is never split across rows. Items are placed in order,
each into the first of up to `config.data.pack_bins` open rows with room for it (and, for pairs,
a free slot of `pairs_per_row`). When an item fits none of them and all are open, or when every
open row is full, the window closes: its rows are emitted in order, padded (segment 0, position 0,
loss_mask 0, source id -1), and the item that did not fit opens the next window.

A window's rows are a function of its first item alone, so the iterator state is the parent's
state before the batch holding that item, the item's index in the batch and how many of the
window's rows were emitted: a restore re-reads from there, rebuilds the window and drops those
rows, giving exactly the rows an uninterrupted run would have.

Skipped records are counted per reason (the run's progress), not logged: every chat or pairs
source is measured when its iterator is built, which reports them (measure.skip_report).

Not grain's `FirstFitPackIterDataset`: it takes one element per sequence (our tokenized batches
hold many items, and a pair's two sequences must share a row) and its rows have no per-slot
fields such as pair ids.
"""

from __future__ import annotations

import collections
import itertools
from typing import NamedTuple

import grain
import numpy as np

from phi4_jax.data.packing import PAD_SOURCE_ID, ROW_FIELDS, RowStream, copy_counters
from phi4_jax.data.sources import Skip, Source


PAIR_ID_BITS = 32  # a DPO row's pair_ids: source_id << 32 | record index (pairs.pair_id)


class Item(NamedTuple):
  """A packer item: its sequences ((ids, loss_mask) int32 pairs: 1 for a conversation, chosen
  then rejected for a pair) and a note counted with the skips (e.g. "cut_long") or None."""
  seqs: tuple
  note: str | None


class TokenizeItems:
  """Batch b of a chat or pairs source's visits -> its items tokenized (a grain map).

  {"tokens", "loss_mask": int32 [n] (every kept item's sequences concatenated), "seq_lengths":
   int32 [items * seqs_per_item], "item_ids": int64 [items] (record index in the source),
   "visits_end", "skipped": [(reason, "file:line")]}. `item_fn(value)` -> Item or skip reason.
  """

  def __init__(self, source: Source, order, visits: int, docs_per_batch: int, item_fn,
               seqs_per_item: int):
    self.source, self.order, self.visits = source, order, visits
    self.docs_per_batch, self.item_fn, self.seqs_per_item = docs_per_batch, item_fn, seqs_per_item

  def __call__(self, b: int) -> dict:
    start = b * self.docs_per_batch
    end = min(start + self.docs_per_batch, self.visits)
    indices = self.order(start, end)
    seqs, ids, skipped = [], [], []
    for record, value in zip(indices.tolist(), self.source.read(indices)):
      if isinstance(value, Skip):
        skipped.append(tuple(value))
        continue
      item = self.item_fn(value.value)
      if isinstance(item, str):
        skipped.append((item, value.where))
        continue
      if item.note:
        skipped.append((item.note, value.where))
      seqs += item.seqs
      ids.append(record)
    lengths = np.fromiter((len(s[0]) for s in seqs), np.int32, count=len(seqs))
    cat = lambda k: (np.concatenate([s[k] for s in seqs]).astype(np.int32) if seqs
                     else np.zeros(0, np.int32))
    return {"tokens": cat(0), "loss_mask": cat(1), "seq_lengths": lengths,
            "item_ids": np.asarray(ids, np.int64), "visits_end": end, "skipped": skipped}


class _Batch:
  """A parent batch held by the packer, with the parent state and counters from before it."""

  def __init__(self, batch: dict, state, counters: dict, seqs_per_item: int):
    self.tokens, self.mask, self.ids = batch["tokens"], batch["loss_mask"], batch["item_ids"]
    self.starts = np.concatenate([[0], np.cumsum(batch["seq_lengths"], dtype=np.int64)])
    self.state, self.counters, self.m = state, counters, seqs_per_item

  def __len__(self) -> int:
    return len(self.ids)

  def size(self, i: int) -> int:
    return int(self.starts[self.m * (i + 1)] - self.starts[self.m * i])


class FitPackedIterator(RowStream):
  """Rows of one chat or pairs source from a grain iterator of TokenizeItems batches.

  kind "chat": ROW_FIELDS (int32 [seq_len]); "pairs": pairs.PAIR_ROW_FIELDS, `max_items` =
  pairs_per_row slots. Same interface as packing.PackedRowsIterator (tokens: real tokens emitted,
  exhausted, counters, get_state/set_state), so mixture.MixIterator mixes them by token share.
  """

  def __init__(self, parent: grain.DatasetIterator, name: str, source_id: int, seq_len: int,
               pad_id: int, bins: int, kind: str, max_items: int = 0):
    super().__init__(parent)
    self.name, self.source_id, self.seq_len, self.pad_id = name, source_id, seq_len, pad_id
    self._bins, self._kind, self._max_items = bins, kind, max_items
    self._m = 2 if kind == "pairs" else 1
    self._reset()
    self._counters = self._zero_counters()
    self._tokens, self._exhausted = 0, False

  def _reset(self, skip_items: int = 0) -> None:
    self._batches: collections.deque[_Batch] = collections.deque()
    self._first = 0  # absolute number of self._batches[0]
    self._cursor = self._window = (0, skip_items)  # (absolute batch, item): next item, window start
    self._ready: collections.deque = collections.deque()
    self._emitted = 0  # rows of the current window emitted

  def _pull(self) -> bool:
    state = self._parent.get_state()
    try:
      batch = next(self._parent)
    except StopIteration:
      return False
    self._batches.append(_Batch(batch, state, copy_counters(self._counters), self._m))
    self._counters["docs"] += len(batch["item_ids"])
    self._counters["visits_end"] = int(batch["visits_end"])
    skipped = self._counters["skipped"]
    for reason, _ in batch["skipped"]:  # counted, not logged: measuring the source reported them
      skipped[reason] = skipped.get(reason, 0) + 1
    return True

  def _peek(self) -> tuple[_Batch, int] | None:
    """The item at the cursor (pulling batches as needed), or None at the end of the data."""
    while True:
      b, i = self._cursor
      if b - self._first >= len(self._batches):
        if not self._pull():
          return None
        continue
      batch = self._batches[b - self._first]
      if i < len(batch):
        return batch, i
      self._cursor = (b + 1, 0)

  def _build_window(self) -> list[dict]:
    self._window = self._cursor
    while self._batches and self._first < self._window[0]:
      self._batches.popleft()
      self._first += 1
    bins: list[list] = []  # [tokens used, [(batch, item)]]
    full = lambda bin: bin[0] == self.seq_len or 0 < self._max_items <= len(bin[1])
    while (found := self._peek()) is not None:
      batch, i = found
      size = batch.size(i)
      target = next((bin for bin in bins if bin[0] + size <= self.seq_len and not full(bin)), None)
      if target is None:
        if len(bins) == self._bins:
          break  # the window closes; this item opens the next
        target = [0, []]
        bins.append(target)
      target[0] += size
      target[1].append((batch, i))
      self._cursor = (self._cursor[0], i + 1)
      if len(bins) == self._bins and all(map(full, bins)):
        break
    return [self._row(items) for _, items in bins]

  def _row(self, items: list[tuple[_Batch, int]]) -> dict[str, np.ndarray]:
    m, seq_len = self._m, self.seq_len
    spans = [(b, int(b.starts[m * i]), int(b.starts[m * (i + 1)])) for b, i in items]
    lengths = np.fromiter(itertools.chain.from_iterable(
        np.diff(b.starts[m * i:m * (i + 1) + 1]) for b, i in items), np.int64)
    n = int(lengths.sum())
    seg_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    fields = ROW_FIELDS if self._kind == "chat" else ("tokens", "segment_ids", "positions", "loss_mask")
    row = {name: np.zeros(seq_len, np.int32) for name in fields}
    row["tokens"][:n] = np.concatenate([b.tokens[s:e] for b, s, e in spans])
    row["tokens"][n:] = self.pad_id
    row["loss_mask"][:n] = np.concatenate([b.mask[s:e] for b, s, e in spans])
    row["segment_ids"][:n] = np.repeat(np.arange(1, len(lengths) + 1, dtype=np.int32), lengths)
    row["positions"][:n] = np.arange(n) - np.repeat(seg_starts, lengths)
    if self._kind == "chat":
      row["source_ids"][:n], row["source_ids"][n:] = self.source_id, PAD_SOURCE_ID
    else:
      slots = self._max_items
      row["pair_source_ids"] = np.full(slots, PAD_SOURCE_ID, np.int32)
      row["pair_source_ids"][:len(items)] = self.source_id
      row["pair_ids"] = np.full(slots, -1, np.int64)
      row["pair_ids"][:len(items)] = [(self.source_id << PAIR_ID_BITS) | int(b.ids[i])
                                      for b, i in items]
    return row

  def __next__(self) -> dict[str, np.ndarray]:
    if self._exhausted:
      raise StopIteration
    if not self._ready:
      rows = self._build_window()
      if not rows:
        self._exhausted = True
        raise StopIteration
      self._ready.extend(rows)
      self._emitted = 0
    row = self._ready.popleft()
    self._emitted += 1
    self._tokens += int((row["segment_ids"] > 0).sum())
    return row

  def get_state(self) -> dict:
    """The parent's state before the batch holding the current window's first item, that item's
    index in it (skip_items) and the window's rows emitted (skip_rows); `counters` are those
    before that batch (a restore re-reads it), `read` those now."""
    if self._batches:  # (after a window is built, the first held batch holds its first item)
      parent, counters = self._batches[0].state, self._batches[0].counters
    else:
      parent, counters = self._parent.get_state(), self._counters
    return {"parent": parent, "skip_items": self._window[1], "skip_rows": self._emitted,
            "counters": copy_counters(counters), "read": copy_counters(self._counters), "tokens": self._tokens,
            "exhausted": self._exhausted}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._reset(state["skip_items"])
    self._counters = copy_counters(state["counters"])
    self._tokens, self._exhausted = state["tokens"], state["exhausted"]
    skip = state["skip_rows"]
    if skip:
      rows = self._build_window()
      if len(rows) < skip:
        raise ValueError(f"source {self.name}: checkpoint points past the end of its data")
      self._ready.extend(rows[skip:])
      self._emitted = skip

"""Mixing sources by token fraction: deficit scheduling over per-source row streams.

Each step emits a row from the source whose emitted tokens lag its target share the most
(smallest tokens / fraction; ties go to the lower source id). Documents differ in length
across sources, so weighting documents would miss the plan; weighting tokens meets it to
within one row per source at every step. The state is the per-source stream states (each
carrying its token counter), so a restore continues the same schedule.

Not grain's `IterDataset.mix` (MixedIterDataset): it interleaves by fixed integer proportions per
element, refuses a zero proportion, and stops the whole mixture as soon as any source runs out;
here an exhausted source drops out and the rest go on, so every source's epochs are read to the end.
"""

from __future__ import annotations

import logging

import grain
import numpy as np

from phi4_jax.data.packing import PackedRowsIterator


class MixIterator(grain.DatasetIterator):
  """Rows from `streams` with token shares `fractions` (sum 1; a zero-fraction source is unused).

  A source that runs out is dropped with a warning and the rest keep their relative shares.
  """

  def __init__(self, streams: list[PackedRowsIterator], fractions: list[float]):
    super().__init__(streams)
    self.streams = streams
    self._fractions = np.asarray(fractions, np.float64)

  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      active = [i for i, s in enumerate(self.streams) if not s.exhausted and self._fractions[i] > 0]
      if not active:
        raise StopIteration
      pick = min(active, key=lambda i: self.streams[i].tokens / self._fractions[i])
      try:
        return next(self.streams[pick])
      except StopIteration:
        logging.warning("source %s has used up its stream (the plan's epochs, rounded up to whole "
                        "epochs); the mixture continues without it", self.streams[pick].name)

  def get_state(self) -> dict:
    return {"sources": {s.name: s.get_state() for s in self.streams}}

  def set_state(self, state: dict) -> None:
    saved = state["sources"]
    missing = sorted({s.name for s in self.streams} ^ set(saved))
    if missing:
      raise ValueError(f"checkpointed data state does not match this mixture's sources: {missing}")
    for s in self.streams:
      s.set_state(saved[s.name])

"""The data iterator read ahead of the training step, in a background thread.

While step N runs, a thread reads the next batches from the host's data iterator and places them on
the devices (`place`: host rows -> sharded global arrays), so that neither the reading nor the
host-to-device copy waits behind the step. A checkpoint saved after step N must hold the data
state after N's batch, not after the batches read ahead: each batch travels with the iterator
state that follows it, and get_state() is the state of the last batch the loop took.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import grain

from phi4_jax.data import progress_from_state

_END = object()  # the iterator ran out


class _Failed:
  def __init__(self, error: BaseException):
    self.error = error


class Prefetch(grain.DatasetIterator):
  """`next()` gives the next placed batch; `depth` batches are read ahead (0: read in the caller)."""

  def __init__(self, inner, place: Callable[[dict], Any], depth: int = 2):
    super().__init__()
    self.inner, self._place, self.depth = inner, place, depth
    self._state = inner.get_state()
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread = None
    if depth > 0:
      self._thread = threading.Thread(target=self._fill, name="phi4_jax-prefetch", daemon=True)
      self._thread.start()

  @property
  def source_names(self):
    return self.inner.source_names

  def _read(self):
    local = next(self.inner, None)
    return _END if local is None else (self._place(local), self.inner.get_state())

  def _fill(self) -> None:
    while not self._stop.is_set():
      try:
        item = self._read()
      except BaseException as e:  # re-raised by the loop's next(), with the thread's traceback
        item = _Failed(e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item is _END or isinstance(item, _Failed):
        return

  def __iter__(self):
    return self

  def __next__(self):
    item = self._read() if self._thread is None else self._queue.get()
    if item is _END or isinstance(item, _Failed):
      if self._thread is not None:
        self._queue.put(item)  # (a later next() sees the same end)
      if item is _END:
        raise StopIteration
      raise item.error
    batch, self._state = item
    return batch

  def get_state(self) -> dict:
    """The data state after the last batch taken (what a checkpoint of that step holds)."""
    return self._state

  def set_state(self, state: dict) -> None:
    raise RuntimeError("Prefetch: restore the inner iterator before reading ahead starts")

  def progress(self) -> dict:
    return progress_from_state(self._state)

  def close(self) -> None:
    """Stops the thread (a read in progress finishes in the background)."""
    self._stop.set()
    if self._thread is not None:
      while True:
        try:
          self._queue.get_nowait()
        except queue.Empty:
          break
      self._thread.join(timeout=5)

  def __enter__(self):
    return self

  def __exit__(self, *_):
    self.close()

"""SIGTERM (a scheduler's preemption) or Ctrl-C as a flag the loop checks between steps."""

from __future__ import annotations

import signal

import jax
import numpy as np


class Preemption:
  """Turns SIGTERM (or a first Ctrl-C) into a flag the loop checks between steps (then saves and
  exits); a second Ctrl-C interrupts at once."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
      self._previous = {}
    return self

  def _handle(self, signum, _):
    self.requested = True
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

  def __exit__(self, *_):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def agreed(self) -> bool:
    """True on every process once any process got SIGTERM."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))

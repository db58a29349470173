"""SIGTERM (a scheduler's preemption), SIGUSR1 (SLURM's warning before the time limit, as
launch/slurm.py asks for) or Ctrl-C as a flag the loop checks between steps."""

from __future__ import annotations

import itertools
import signal

import jax

AGREE_TIMEOUT_S = 1800  # how long a process waits at a step's check for the slowest one

_instances = itertools.count()  # (each process opens the same sequence: one per stage)


class Preemption:
  """Turns SIGTERM (or a first Ctrl-C) into a flag the loop checks between steps (then saves and
  exits); a second Ctrl-C interrupts at once."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

  def __init__(self):
    self.requested = False
    self.signal = ""  # the name of the signal this process got, e.g. "SIGINT"
    self._previous = {}
    self._tag = next(_instances)

  def __enter__(self):
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
      self._previous = {}
    return self

  def _handle(self, signum, _):
    self.requested = True
    self.signal = self.signal or signal.Signals(signum).name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

  def __exit__(self, *_):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def agreed(self, step: int) -> bool:
    """True on every process, at the same step, once any process got SIGTERM.

    Across processes the flags meet in jax.distributed's key-value store: a process that got the
    signal writes a key for this step, all wait at this step's barrier, then all read the step's
    keys. These are host RPCs to the coordinator, so the check does not wait for the steps queued
    on the devices (an all-gather of the flags on the devices would, at every step).
    """
    if jax.process_count() == 1:
      return self.requested
    from jax._src import distributed
    client = distributed.global_state.client
    prefix = f"phi4_jax/preempt/{self._tag}/{step}/"
    if self.requested:
      client.key_value_set(prefix + str(jax.process_index()), "1")
    client.wait_at_barrier(f"phi4_jax_preempt_{self._tag}_{step}", AGREE_TIMEOUT_S * 1000)
    return bool(client.key_value_dir_get(prefix))

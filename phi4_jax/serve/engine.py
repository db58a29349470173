"""Continuous batching: a fixed set of decode slots over one KV cache, and the scheduler thread.

  engine = Engine(params, cfg, max_batch=8, max_queue=64, cache_len=2048)
  engine.submit([Job(prompt_ids, n, Sampling(...), listener)])   # False: the queue is full
  ...
  engine.close()

The scheduler loops: drop cancelled requests (their slots free at once), admit waiting rows into
free slots (steps.admit: prefilled together per prompt-length bucket, each row's first token drawn),
run one steps.decode chunk of every slot, and hand each row's new tokens to its job's listener,
freeing a slot as soon as its row stops (a stop id, max_new, or the listener's stop string). A
request's n choices are n rows sharing one prefill; they may join at different times.

Row r of a request is the row inference.generate would decode for that prompt alone with
num_samples=n: the same cache layout, positions and sampling keys (seed, sample index, step), so
greedy rows equal `generate(..., temperature=0)` and seeded rows equal `generate(..., seed=s)`
whatever else is in flight. Prefix reuse across requests is not done (see docs/serving.md): only
a request's own choices share their prompt's prefill.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from phi4_jax import model as model_lib
from phi4_jax.inference import batching, decoder
from phi4_jax.inference.generate import cache_sharding
from phi4_jax.serve import choose, steps


@dataclasses.dataclass(frozen=True)
class Sampling:
  """One request's generation settings (checked by the HTTP layer)."""

  max_new: int
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop_ids: tuple[int, ...] = ()
  logprobs: bool = False  # compute each token's log-prob and top alternatives

  @property
  def filtered(self) -> bool:
    return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0)


class Job:
  """A prompt and its n choices. The listener gets `token(choice, id, logprob, is_stop_id) -> bool`
  (True: a stop string ended the choice) and `finish(choice, reason)` ("stop", "length",
  "cancelled", "error"), both on the scheduler thread."""

  def __init__(self, ids: Sequence[int], n: int, sampling: Sampling, listener):
    self.ids = np.asarray(ids, np.int32)
    self.n, self.sampling, self.listener = n, sampling, listener
    self.cancelled = threading.Event()
    self.produced = [0] * n

  def cancel(self) -> None:
    self.cancelled.set()


@dataclasses.dataclass
class _Row:
  job: Job
  choice: int


class Engine:
  def __init__(self, params: dict, cfg: model_lib.ModelConfig, *, max_batch: int, max_queue: int,
               cache_len: int, chunk: int = 8, mesh=None):
    if mesh is not None:
      params = model_lib.shard_params(params, cfg, mesh)
    self.params, self.cfg, self.mesh = params, cfg, mesh
    self.split = decoder.split_layers(params)
    self.slots, self.max_queue, self.cache_len, self.chunk = max_batch, max_queue, cache_len, chunk
    self.sharding = cache_sharding(cfg, mesh)
    shape = (max_batch, cfg.n_kv_heads, cache_len, cfg.head_dim)
    zeros = lambda: jax.device_put(jnp.zeros(shape, jnp.dtype(cfg.dtype)), self.sharding)
    self.cache = tuple({"k": zeros(), "v": zeros()} for _ in range(cfg.n_layers))
    s = max_batch
    self.state = {"token": np.zeros(s, np.int32), "column": np.full(s, cache_len - 1, np.int32),
                  "pad": np.full(s, cache_len, np.int32), "position": np.zeros(s, np.int32),
                  "step": np.zeros(s, np.int32), "seed": np.zeros(s, np.uint32),
                  "sample": np.zeros(s, np.int32), "temp": np.zeros(s, np.float32),
                  "top_k": np.zeros(s, np.int32), "top_p": np.ones(s, np.float32)}
    self.rows: list[_Row | None] = [None] * s
    self.waiting: collections.deque[_Row] = collections.deque()
    self.busy, self.decode_steps, self.decoded_rows = 0, 0, 0  # decoded_rows: slots x steps computed
    self.cond = threading.Condition()
    self.running = True
    self.thread = threading.Thread(target=self._loop, name="serve-scheduler", daemon=True)
    self.thread.start()

  # -- the request side (HTTP threads) -------------------------------------------------------
  def room(self, length: int) -> int:
    """The most new tokens a prompt of `length` tokens can get (its slot's columns, the context)."""
    return min(self.cache_len + 1 - batching.bucket(length, batching.MIN_PROMPT_BUCKET),
               self.cfg.max_seq_len - length)

  def check(self, ids: Sequence[int], max_new: int, what: str = "prompt") -> None:
    """ValueError(param, message) when a prompt and its token budget do not fit a slot."""
    if not len(ids):
      raise ValueError(what, f"{what}: empty")
    bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
    if bad:
      raise ValueError(what, f"{what}: token id {bad[0]} is outside the vocabulary [0, {self.cfg.vocab_size})")
    room = self.room(len(ids))
    if max_new > room:
      raise ValueError("max_tokens", f"max_tokens: {max_new} new tokens after a {len(ids)}-token prompt "
                       f"exceed the context (at most {max(room, 0)} here)")

  def capacity(self) -> int:
    return self.slots + self.max_queue

  def submit(self, jobs: Sequence[Job]) -> bool:
    """Queues every job's rows, or none (False) when more than max_queue would wait."""
    rows = [_Row(job, c) for job in jobs for c in range(job.n)]
    with self.cond:
      if len(self.waiting) + len(rows) > self.max_queue + self.slots - self.busy:
        return False
      self.waiting.extend(rows)
      self.cond.notify_all()
    return True

  def queue_depth(self) -> int:
    return len(self.waiting)

  def idle(self) -> bool:
    with self.cond:
      return not self.waiting and not self.busy

  def close(self) -> None:
    with self.cond:
      self.running = False
      self.cond.notify_all()
    self.thread.join()

  def warm_up(self) -> None:
    """Compiles the plain decode chunk for every power of two of slots up to max_batch, and admits of
    the shortest prompt bucket for every row bucket up to max_batch, before the first request."""
    rows = 1
    while True:
      group = [_Row(Job([0], 1, Sampling(max_new=1), None), 0) for _ in range(rows)]
      self._admit_group(group, [self.slots] * rows)  # (slots out of range: nothing is written)
      if rows >= self.slots:
        break
      rows = self._row_bucket(rows + 1)
    rows = 1
    while True:  # the decode chunk of every power of two of slots (see _decode)
      self._decode(rows)
      if rows >= self.slots:
        break
      rows = min(2 * rows, self.slots)

  # -- the scheduler thread --------------------------------------------------------------------
  def _loop(self) -> None:
    while True:
      with self.cond:
        while self.running and not self.waiting and not self.busy:
          self.cond.wait()
        if not self.running:
          break
        self._drop_cancelled()
        joining = self._take_waiting()
      try:
        self._admit(joining)
        if self.busy:
          self._deliver_chunk(*self._decode())
      except Exception:  # (a failed call fails the rows it touched; the server goes on)
        logging.exception("serve: engine step failed")
        self._fail_all()

  def _row_bucket(self, n: int) -> int:
    """Rows of an admit call: the smallest power of 4 >= n, at most max_batch's power of two (fewer
    shapes than powers of two, so the ways concurrent arrivals happen to group compile fewer admits)."""
    rows = 1
    while rows < n:
      rows *= 4
    return min(rows, batching.bucket(self.slots))

  def _drop_cancelled(self) -> None:
    self.waiting = collections.deque(r for r in self.waiting if not r.job.cancelled.is_set())
    for slot, row in enumerate(self.rows):
      if row is not None and row.job.cancelled.is_set():
        self._free(slot, "cancelled")

  def _take_waiting(self) -> list[tuple[_Row, int]]:
    free = [s for s, r in enumerate(self.rows) if r is None]
    joining = []
    while self.waiting and free:
      slot = free.pop(0)
      joining.append((self.waiting.popleft(), slot))
      self.rows[slot] = joining[-1][0]
      self.busy += 1
    return joining

  def _admit(self, joining: list[tuple[_Row, int]]) -> None:
    groups = collections.defaultdict(list)
    for row, slot in joining:
      groups[batching.bucket(len(row.job.ids), batching.MIN_PROMPT_BUCKET)].append((row, slot))
    for members in groups.values():
      self._admit_group([r for r, _ in members], [s for _, s in members])

  def _admit_group(self, rows: list[_Row], slots: list[int]) -> None:
    """Prefills the rows' distinct prompts (one per job) and starts each row in its slot."""
    jobs = list(dict.fromkeys(r.job for r in rows))
    p = batching.bucket(max(len(j.ids) for j in jobs), batching.MIN_PROMPT_BUCKET)
    n = self._row_bucket(len(rows))  # (prompts padded to as many rows: one compile per (p, n))
    tokens, pad = batching.left_padded([j.ids for j in jobs], n, p)
    src, slot_r = np.zeros(n, np.int32), np.full(n, self.slots, np.int32)
    src[:len(rows)] = [jobs.index(r.job) for r in rows]
    slot_r[:len(rows)] = slots
    settings = [_row_settings(r) for r in rows] + [_row_settings(None)] * (n - len(rows))
    columns = [np.asarray(c, dtype) for c, dtype in zip(zip(*settings), _SETTING_DTYPES)]
    first, lps, self.cache = steps.admit(
        self.split, self.cache, tokens, pad, src, slot_r, *columns, cfg=self.cfg,
        filtered=any(r.job.sampling.filtered for r in rows), k=_k(r.job for r in rows), sharding=self.sharding)
    first, lps = np.asarray(first), jax.tree.map(np.asarray, lps)
    for i, (row, slot) in enumerate(zip(rows, slots)):
      if slot >= self.slots:
        continue
      for name, value in zip(_SETTING_NAMES, settings[i]):
        self.state[name][slot] = value
      self.state["column"][slot], self.state["pad"][slot] = p, pad[src[i]]
      self.state["position"][slot], self.state["step"][slot] = len(row.job.ids), 1
      self.state["token"][slot] = first[i]
      self._give(slot, int(first[i]), _entry(lps, i, None))

  def _decode(self, rows: int | None = None):
    """One decode chunk of the first `rows` slots: by default the power of two (at most max_batch)
    past the last busy slot. A row joins the lowest free slot, so a light load decodes few rows."""
    if rows is None:
      last = max((s for s, r in enumerate(self.rows) if r is not None), default=0)
      rows = min(batching.bucket(last + 1), self.slots)
    active = [r for r in self.rows[:rows] if r is not None]
    st = {name: values[:rows] for name, values in self.state.items()}
    tokens, lps, self.cache = steps.decode(
        self.split, self.cache, st["token"], st["column"], st["pad"], st["position"], st["step"],
        st["seed"], st["sample"], st["temp"], st["top_k"], st["top_p"], cfg=self.cfg, chunk=self.chunk,
        filtered=any(r.job.sampling.filtered for r in active), k=_k(r.job for r in active),
        sharding=self.sharding)
    self.decode_steps += self.chunk
    self.decoded_rows += rows * self.chunk
    return np.asarray(tokens), jax.tree.map(np.asarray, lps)

  def _deliver_chunk(self, tokens: np.ndarray, lps) -> None:
    for slot, row in enumerate(list(self.rows[:len(tokens)])):  # (the slots past them are free)
      if row is None:
        continue
      for j in range(self.chunk):
        if self.rows[slot] is None:
          break
        self._give(slot, int(tokens[slot, j]), _entry(lps, slot, j))
      for name in ("column", "position", "step"):
        self.state[name][slot] += self.chunk
      self.state["token"][slot] = tokens[slot, -1]

  def _give(self, slot: int, token: int, logprob) -> None:
    """Hands one token to the slot's row; frees the slot when the row stops."""
    row = self.rows[slot]
    job = row.job
    job.produced[row.choice] += 1
    is_stop = token in job.sampling.stop_ids
    stop_string = job.listener.token(row.choice, token, logprob, is_stop)
    if is_stop or stop_string:
      self._free(slot, "stop")
    elif job.produced[row.choice] >= job.sampling.max_new:
      self._free(slot, "length")

  def _free(self, slot: int, reason: str) -> None:
    row = self.rows[slot]
    with self.cond:
      self.rows[slot] = None
      self.busy -= 1
      self.state["column"][slot], self.state["pad"][slot] = self.cache_len - 1, self.cache_len
      self.cond.notify_all()
    row.job.listener.finish(row.choice, reason)

  def _fail_all(self) -> None:
    for slot, row in enumerate(self.rows):
      if row is not None:
        self._free(slot, "error")


_SETTING_NAMES = ("seed", "sample", "temp", "top_k", "top_p")
_SETTING_DTYPES = (np.uint32, np.int32, np.float32, np.int32, np.float32)


def _row_settings(row: _Row | None) -> tuple:
  """(seed, sample index, temperature, top_k, top_p) of a row (None: a padding row, greedy)."""
  if row is None:
    return (0, 0, 0.0, 0, 1.0)
  s = row.job.sampling
  return (s.seed % 2**32, row.choice, s.temperature, s.top_k, s.top_p)


def _k(jobs) -> int:
  return choose.TOP_LOGPROBS if any(job.sampling.logprobs for job in jobs) else 0


def _entry(lps, row: int, j: int | None):
  """(log-prob, top log-probs, top ids) of one token out of a call's logprobs (None: not asked)."""
  if lps is None:
    return None
  at = (row,) if j is None else (row, j)
  return float(lps[0][at]), lps[1][at], lps[2][at]

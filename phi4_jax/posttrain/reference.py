"""DPO's reference log-probs computed once before training (config.dpo.precompute_reference).

The pass reads the batches training will read (a fresh data iterator, the same shards), runs the
frozen reference over them and keeps each pair's (chosen, rejected) sums by pair id in
W/reference_logprobs/process_<i>.npz; training then attaches them to its batches and needs no
reference forward (nor the reference params in memory). Each process writes a file of its own
rows every CHUNK_BATCHES batches (process_<i>.chunk_<k>.npz), so a killed pass resumes where it
stopped. Scoring a chunk is one computation over every process's rows, so the processes agree on
what is done: a chunk (or the table) that one process lacks is scored again by all of them.
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import numpy as np

from phi4_jax.store import atomic, workdir as workdir_lib

TABLE_DIR = "reference_logprobs"
CHUNK_BATCHES = 32


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows, in its local order, of an [M, B/M, ...] array sharded over axis 1."""
  shards = {s.index[1].start or 0: np.asarray(s.data) for s in x.addressable_shards}
  rows = np.concatenate([shards[k] for k in sorted(shards)], axis=1)
  return rows.reshape(-1, *rows.shape[2:])


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
  with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **arrays)


def _everywhere(done: bool) -> bool:
  """Whether `done` holds in every process (all processes get the same answer)."""
  if jax.process_count() == 1:
    return done
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(done))))


def _chunk(batches: list, to_global, score) -> dict[str, np.ndarray]:
  ids, chosen, rejected = [], [], []
  for local in batches:
    c, r = score(to_global(local))
    valid = local["pair_ids"] >= 0
    ids.append(local["pair_ids"][valid])
    chosen.append(_local_rows(c)[valid])
    rejected.append(_local_rows(r)[valid])
  cat = lambda xs, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype)
  return {"ids": cat(ids, np.int64), "chosen": cat(chosen, np.float32), "rejected": cat(rejected, np.float32)}


def precompute(run, reference: dict, make_iterator, to_global, sequence_logprobs) -> dict[str, np.ndarray]:
  """{ids, chosen, rejected} of every pair in the batches of config.steps (+ skip_batches) steps,
  each scored by sequence_logprobs (dpo.sequence_logprobs: the reference's [B, P] sums)."""
  config = run.config
  folder, me = workdir_lib.path(run.workdir, TABLE_DIR), f"process_{jax.process_index()}"
  final = os.path.join(folder, f"{me}.npz")
  if _everywhere(os.path.exists(final)):
    return dict(np.load(final))
  os.makedirs(folder, exist_ok=True)
  pairs = config.data.pairs_per_row
  score = jax.jit(lambda params, batch_MxBxT: jax.lax.map(lambda mb: sequence_logprobs(
      params, mb, run.cfg, pairs, run.mesh, config.loss_chunk or 256), batch_MxBxT))
  score_one = lambda batch: score(reference, batch)
  iterator, total = make_iterator(), config.steps + config.skip_batches
  parts, paths = [], []
  for k, start in enumerate(range(0, total, CHUNK_BATCHES)):
    batches = [b for b in (next(iterator, None) for _ in range(min(CHUNK_BATCHES, total - start)))
               if b is not None]
    paths.append(os.path.join(folder, f"{me}.chunk_{k}.npz"))
    if not _everywhere(os.path.exists(paths[-1])):  # (a resumed pass reads finished chunks' batches unscored)
      _save(paths[-1], _chunk(batches, to_global, score_one))
      logging.info("reference log-probs: %d of %d batches", start + len(batches), total)
    parts.append(dict(np.load(paths[-1])))
  table = {key: np.concatenate([p[key] for p in parts]) for key in ("ids", "chosen", "rejected")}
  _save(final, table)
  for path in paths:
    os.remove(path)
  return table


class WithReference(grain.DatasetIterator):
  """A DPO iterator whose batches also carry ref_chosen / ref_rejected [B, P] from the table."""

  def __init__(self, inner, table: dict[str, np.ndarray]):
    super().__init__()
    self.inner = inner
    order = np.argsort(table["ids"], kind="stable")
    self._ids = table["ids"][order]
    self._values = np.stack([table["chosen"][order], table["rejected"][order]], axis=-1)

  @property
  def source_names(self):
    return self.inner.source_names

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self.inner)
    ids = batch["pair_ids"]
    values = np.zeros((*ids.shape, 2), np.float32)
    at = np.clip(np.searchsorted(self._ids, ids), 0, max(len(self._ids) - 1, 0))
    hit = (self._ids[at] == ids) if len(self._ids) else np.zeros(ids.shape, bool)
    missing = (ids >= 0) & ~hit
    if missing.any():
      raise RuntimeError(f"pair {int(ids[missing][0])} has no precomputed reference log-probs: the "
                         f"run reads past the {len(self._ids)} pairs scored before training")
    values[hit] = self._values[at[hit]]
    return {**batch, "ref_chosen": values[..., 0], "ref_rejected": values[..., 1]}

  def get_state(self) -> dict:
    return self.inner.get_state()

  def set_state(self, state: dict) -> None:
    self.inner.set_state(state)

  def progress(self) -> dict:
    return self.inner.progress()

"""The training data pipeline: Table-5 sources -> grain -> packed, mixed, sharded batches.

The data is split into `config.data.shards` logical shards (0 = one per jax process); a process
reads a contiguous range of them, and every batch holds global_batch_size / shards rows from each
shard in order. So with a fixed number of shards the global batch is the same whatever the number
of processes, and processes read disjoint rows.

In a shard, per source: `grain.MapDataset.range(n).map(TokenizeBatch)`, whose element b is the
tokenized b-th batch of `docs_per_batch` documents in `EpochOrder` (shuffled anew each epoch,
whole epochs covering the plan), sliced b = shard mod shards, read by grain threads
(`read_threads`, `prefetch`) or worker processes (`worker_count`, mp_prefetch). Elements are pure
functions of their index, so the stream is the same whatever the number of threads or workers.
Then: pack each source into rows (packing.py) and mix rows by token fraction (mixture.py).
config.data is checked first (check.py), the documents in play measured where needed (measure.py)
and the epochs planned (planner.py).

Post-training stages read the same way: when the sources' format is "chat" (SFT) the rows are the
same ROW_FIELDS with loss_mask 1 on assistant tokens only (chat.py), and for "pairs" (DPO) they are
PAIR_ROW_FIELDS (pairs.py); whole conversations or pairs are packed by first fit (fitpack.py)
instead of being cut every seq_len tokens. Mixing, sharding and the iterator state are the same.
"""

from __future__ import annotations

import functools
import itertools
import math

import grain
import ml_collections
import numpy as np
from absl import flags as absl_flags

from phi4_jax.data import corpus
from phi4_jax.data.check import check_config, stage_format
from phi4_jax.data.fitpack import FitPackedIterator, TokenizeItems
from phi4_jax.data.measure import documents_in_play, item_fn, items_in_play
from phi4_jax.data.mixture import MixIterator
from phi4_jax.data.order import EpochOrder
from phi4_jax.data.packing import PAD_SOURCE_ID, ROW_FIELDS, PackedRowsIterator, make_row
from phi4_jax.data.pairs import PAIR_ROW_DTYPES, PAIR_ROW_FIELDS
from phi4_jax.data.planner import Leaf, leaves, make_plan
from phi4_jax.data.sources import Skip, Source, open_source
from phi4_jax.tokenizer import Phi4Tokenizer


class TokenizeBatch:
  """Batch b of a source's visits -> its documents tokenized and concatenated (a grain map).

  {"tokens": int32 [n] (each document followed by <|endoftext|>), "lengths": int32 [docs],
   "visits_end": first visit after this batch, "skipped": [(reason, "file:line")]}. A pure
  function of b, so the stream is the same whatever the threads or worker processes.
  """

  def __init__(self, source: Source, order: EpochOrder, visits: int, docs_per_batch: int,
               tokenizer_threads: int):
    self.source, self.order, self.visits = source, order, visits
    self.docs_per_batch, self.tokenizer_threads = docs_per_batch, tokenizer_threads
    self.tokenizer = Phi4Tokenizer()

  def __call__(self, b: int) -> dict:
    start = b * self.docs_per_batch
    end = min(start + self.docs_per_batch, self.visits)
    texts = self.source.read(self.order(start, end))
    docs = [t for t in texts if not isinstance(t, Skip)]
    if self.tokenizer_threads > 1:
      ids = self.tokenizer.encode_ordinary_batch(docs, num_threads=self.tokenizer_threads)
    else:  # no thread hand-off per document; grain's read_threads already run batches in parallel
      ids = [self.tokenizer.encode_ordinary(doc) for doc in docs]
    lengths = np.fromiter((len(x) + 1 for x in ids), np.int32, count=len(ids))
    eot = (self.tokenizer.endoftext_id,)
    tokens = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(
        (x, eot) for x in ids)), np.int32, count=int(lengths.sum()))
    return {"tokens": tokens, "lengths": lengths, "visits_end": end,
            "skipped": [tuple(t) for t in texts if isinstance(t, Skip)]}


def doc_batches(tokenize: TokenizeBatch) -> grain.MapDataset:
  """Element b: batch b of `tokenize.docs_per_batch` visits, tokenized."""
  return grain.MapDataset.range(-(-tokenize.visits // tokenize.docs_per_batch)).map(tokenize)


def _shards(config: ml_collections.ConfigDict, process_index: int, process_count: int) -> int:
  """The number of logical data shards, checked against this run's processes and batch."""
  d = config.data
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  shards = int(d.shards) or process_count
  if shards < 0 or shards % process_count:
    raise ValueError(f"config.data.shards: must be a multiple of the {process_count} jax "
                     f"processes (0 = one shard per process), got {d.shards}")
  if config.global_batch_size % shards:
    raise ValueError(f"config.global_batch_size: must be divisible by the {shards} data shards "
                     f"(config.data.shards={d.shards}; 0 = one per process), got "
                     f"{config.global_batch_size}")
  return shards


def stream_epochs(planned: float, margin: float, max_epochs: float) -> float:
  """Epochs a source's stream holds: whole epochs covering the plan plus margin, capped by
  max_epochs. Training consumes the planned share, so its last epoch is a prefix (a deterministic
  subset) of that epoch's shuffled order."""
  whole = float(math.ceil(planned * (1 + margin)))
  return min(whole, max_epochs) if max_epochs else whole


def epoch_order(name: str, source: Source, records: np.ndarray | None, seed: int) -> EpochOrder:
  """The visit order of a source's documents in play (parquet row groups as shuffle blocks)."""
  blocks = source.block_starts()
  if blocks is not None and records is not None:
    blocks = np.unique(np.searchsorted(records, blocks))
    blocks = blocks[blocks < len(records)]
  return EpochOrder(len(source), seed, name, records, blocks)


def _read(batches: grain.MapDataset, d: ml_collections.ConfigDict, shard: int,
          shards: int) -> grain.DatasetIterator:
  """This shard's slice of a source's batches, read by grain threads or worker processes."""
  ds = batches[shard::shards].to_iter_dataset(
      grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=d.prefetch))
  if d.worker_count:
    if not absl_flags.FLAGS.is_parsed():  # grain's workers read its absl flags: outside absl.app
      # (tests, notebooks, the benchmark) nothing parsed them, so use their defaults
      absl_flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.worker_count,
                                                     per_worker_buffer_size=max(d.prefetch, 1)))
  return iter(ds)


def _stream(leaf: Leaf, source_id: int, config, epochs: float, records: np.ndarray | None,
            source: Source, shard: int, shards: int) -> PackedRowsIterator:
  d = config.data
  order = epoch_order(leaf.name, source, records, config.seed)
  visits = math.ceil(stream_epochs(epochs, d.epoch_margin, leaf.cfg.max_epochs) * order.n)
  batches = doc_batches(TokenizeBatch(source, order, visits, d.docs_per_batch, d.tokenizer_threads))
  return PackedRowsIterator(_read(batches, d, shard, shards), leaf.name, source_id, config.seq_len,
                            Phi4Tokenizer.pad_id)


def _fit_stream(leaf: Leaf, source_id: int, config, epochs: float, records: np.ndarray | None,
                source: Source, shard: int, shards: int) -> FitPackedIterator:
  """A chat or pairs source's rows: whole items packed by first fit (fitpack.py)."""
  d = config.data
  order = epoch_order(leaf.name, source, records, config.seed)
  visits = math.ceil(stream_epochs(epochs, d.epoch_margin, leaf.cfg.max_epochs) * order.n)
  pairs = source.mode == "pairs"
  tokenize = TokenizeItems(source, order, visits, d.docs_per_batch, item_fn(source, config)[1],
                           2 if pairs else 1)
  return FitPackedIterator(_read(doc_batches(tokenize), d, shard, shards), leaf.name, source_id,
                           config.seq_len, Phi4Tokenizer.pad_id, d.pack_bins, source.mode,
                           d.pairs_per_row if pairs else 0)


class TrainIterator(grain.DatasetIterator):
  """Batches {tokens, segment_ids, positions, loss_mask, source_ids}: int32 [B_local, seq_len].

  Rows come from this process's logical shards in order, `rows_per_shard` from each. A grain
  DatasetIterator: get_state/set_state are JSON-able, and grain.checkpoint.CheckpointSave /
  CheckpointRestore store it with orbax beside the model. An SFT stage's iterator is one too
  (its loss_mask is 1 on assistant tokens only); a DPO stage's is PairIterator.
  """

  fields = ROW_FIELDS

  def __init__(self, mixers: dict[int, MixIterator], rows_per_shard: int, seq_len: int,
               unique_tokens: dict[str, float], shards: int):
    super().__init__(list(mixers.values()))
    self._mixers, self._rows_per_shard = mixers, rows_per_shard
    self.source_names = tuple(s.name for s in next(iter(mixers.values())).streams)
    self._unique_tokens, self._shards = unique_tokens, shards
    self._batches = 0
    self._pad_row = self._padding(seq_len)

  def _padding(self, seq_len: int) -> dict[str, np.ndarray]:
    empty = np.zeros(0, np.int32)
    return make_row(empty, empty, seq_len, PAD_SOURCE_ID, Phi4Tokenizer.pad_id)

  def __next__(self) -> dict[str, np.ndarray]:
    """The next batch; a shard whose data ran out fills its rows with padding."""
    rows, real = [], 0
    for mixer in self._mixers.values():
      for _ in range(self._rows_per_shard):
        row = next(mixer, None)
        real += row is not None
        rows.append(self._pad_row if row is None else row)
    if not real:
      raise StopIteration
    self._batches += 1
    return {k: np.stack([r[k] for r in rows]) for k in self.fields}

  def get_state(self) -> dict:
    return {"batches": self._batches, "shards": self._shards,
            "unique_tokens": dict(self._unique_tokens),
            "mixers": {str(shard): m.get_state() for shard, m in self._mixers.items()}}

  def set_state(self, state: dict) -> None:
    if sorted(state["mixers"]) != sorted(map(str, self._mixers)):
      raise ValueError(f"checkpointed data state holds shards {sorted(state['mixers'])}; this "
                       f"process reads shards {sorted(map(str, self._mixers))} "
                       "(config.data.shards and the process count must match the saved run)")
    for shard, mixer in self._mixers.items():
      mixer.set_state(state["mixers"][str(shard)])
    self._batches = state["batches"]

  def progress(self) -> dict:
    """See progress_from_state."""
    return progress_from_state(self.get_state())


class PairIterator(TrainIterator):
  """A DPO stage's batches: PAIR_ROW_FIELDS (tokens, segment_ids, positions, loss_mask: int32
  [B_local, seq_len]; pair_source_ids int32 and pair_ids int64 [B_local, pairs_per_row], -1 in an
  empty slot). State and progress as TrainIterator's (docs_read counts pairs)."""

  fields = PAIR_ROW_FIELDS

  def __init__(self, mixers, rows_per_shard, seq_len, unique_tokens, shards, pairs_per_row: int):
    self._pairs_per_row = pairs_per_row
    super().__init__(mixers, rows_per_shard, seq_len, unique_tokens, shards)

  def _padding(self, seq_len: int) -> dict[str, np.ndarray]:
    row = {k: np.zeros(seq_len, PAIR_ROW_DTYPES[k]) for k in PAIR_ROW_FIELDS[:4]}
    row["tokens"][:] = Phi4Tokenizer.pad_id
    for k in PAIR_ROW_FIELDS[4:]:
      row[k] = np.full(self._pairs_per_row, -1, PAIR_ROW_DTYPES[k])
    return row


def progress_from_state(state: dict) -> dict:
  """The run's data progress from a TrainIterator state (live, or a checkpoint's JSON).

  Per source: `tokens` emitted by this process, `epochs` = all shards' tokens (estimated from
  this process's) / unique tokens, the plan's unit; `docs_read` and `skipped` records (per
  reason) by this process in every document batch handed to the packer, the one being packed
  included (the skips logged so far; batches that grain threads or workers read ahead are not
  counted until packed, so the counts do not depend on timing); `exhausted` in all its shards.
  A state from before `read` was saved gives the counts before the batch being packed.
  """
  mixers = list(state["mixers"].values())
  scale = state["shards"] / len(mixers)
  sources = {}
  for name in mixers[0]["sources"]:
    per_shard = [m["sources"][name] for m in mixers]
    tokens = sum(s["tokens"] for s in per_shard)
    skipped: dict[str, int] = {}
    read = [s.get("read", s["counters"]) for s in per_shard]
    for counters in read:
      for reason, n in counters["skipped"].items():
        skipped[reason] = skipped.get(reason, 0) + n
    sources[name] = {"tokens": tokens, "epochs": tokens * scale / state["unique_tokens"][name],
                     "docs_read": sum(c["docs"] for c in read),
                     "skipped": skipped, "exhausted": all(s["exhausted"] for s in per_shard)}
  return {"batches": state["batches"], "tokens": sum(s["tokens"] for s in sources.values()),
          "sources": sources}


def make_train_iterator(config: ml_collections.ConfigDict, process_index: int = 0,
                        process_count: int = 1) -> TrainIterator:
  """This jax process's batches of `config` (see module docstring); errors name config fields.

  The stage's format (stage_format: its sources are all text, all "chat" or all "pairs") picks
  the rows: pretraining's and SFT's are ROW_FIELDS (a TrainIterator), DPO's PAIR_ROW_FIELDS (a
  PairIterator)."""
  check_config(config)
  kind = stage_format(config.data.sources)
  shards = _shards(config, process_index, process_count)
  cache_dir = corpus.cache_dir(config.data)
  leafs = leaves(config.data.sources)
  opened = {leaf.name: open_source(leaf, cache_dir) for leaf in leafs}
  measured = (documents_in_play if kind == "text"
              else functools.partial(items_in_play, config=config))
  in_play = {leaf.name: measured(leaf, opened[leaf.name], cache_dir) for leaf in leafs}
  plan = make_plan(config, {name: unique for name, (unique, _) in in_play.items()})
  mine = range(process_index * shards // process_count, (process_index + 1) * shards // process_count)
  stream = _stream if kind == "text" else _fit_stream
  mixers = {shard: MixIterator([stream(leaf, source_id, config, p.epochs, in_play[leaf.name][1],
                                       opened[leaf.name], shard, shards)
                                for source_id, (leaf, p) in enumerate(zip(leafs, plan.sources))],
                               [leaf.fraction for leaf in leafs])
            for shard in mine}
  args = (mixers, config.global_batch_size // shards, config.seq_len,
          {p.name: p.unique_tokens for p in plan.sources}, shards)
  if kind == "pairs":
    return PairIterator(*args, config.data.pairs_per_row)
  return TrainIterator(*args)

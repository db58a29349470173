"""Measuring a source: the token count of every document, cached beside the file indexes.

A document's count includes its `<|endoftext|>` separator, so a source's unique tokens are the
sum over its documents and equal the tokens one epoch puts in packed rows. The length filters
(`min_doc_tokens` / `max_doc_tokens`) pick the documents in play from these counts.

Chat and pairs sources (post-training) are always measured, with the tokenization training uses
(item_stats: a conversation as cut to seq_len, a pair's two sequences), so a source with nothing
to train on is refused when the iterator is built, naming it.
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from phi4_jax.data import corpus
from phi4_jax.data.planner import Leaf, PlanError, leaves
from phi4_jax.data.formats import load_npy, save_npy
from phi4_jax.data.sources import Skip, Source, count_skip, open_source
from phi4_jax.tokenizer import Phi4Tokenizer

_VERSION = "1"  # bump when counting changes


def doc_lengths(source: Source, cache_dir: str, threads: int = 2, batch: int = 256) -> np.ndarray:
  """int32 [len(source)]: tokens of each document plus its separator; 0 for skipped records."""
  path = os.path.join(cache_dir, "measure", f"{source.fingerprint}-v{_VERSION}.npy")
  cached = load_npy(path)
  if cached is not None and cached.shape == (len(source),):
    return cached
  tokenizer = Phi4Tokenizer()
  lengths = np.zeros(len(source), np.int32)
  skipped: dict[str, int] = {}
  for start in range(0, len(source), batch):
    indices = range(start, min(start + batch, len(source)))
    keep, docs = [], []
    for i, t in zip(indices, source.read(indices)):
      if isinstance(t, Skip):
        count_skip(skipped, source.name, t, during="measuring")
      else:
        keep.append(i)
        docs.append(t)
    ids = tokenizer.encode_ordinary_batch(docs, threads)
    lengths[keep] = [len(x) + 1 for x in ids]
  if skipped:  # this pass reads every record once; training counts its own reads (progress())
    logging.warning("source %s: measuring its %d records found %d documents; skipped %s",
                    source.name, len(source), int((lengths > 0).sum()), skipped)
  save_npy(path, lengths)
  return lengths


def kept_records(lengths: np.ndarray, min_doc_tokens: int, max_doc_tokens: int) -> np.ndarray:
  """Record ids whose document (separator excluded) has min..max tokens (max 0 = no limit)."""
  doc = lengths.astype(np.int64) - 1
  keep = (lengths > 0) & (doc >= min_doc_tokens)
  if max_doc_tokens:
    keep &= doc <= max_doc_tokens
  return np.flatnonzero(keep)


def documents_in_play(leaf: Leaf, source: Source,
                      cache_dir: str) -> tuple[float, np.ndarray | None]:
  """(unique tokens counted from the files, or 0 when declared and unfiltered; record ids passing
  the length filter, or None = all records)."""
  cfg = leaf.cfg
  filtered = cfg.min_doc_tokens > 0 or cfg.max_doc_tokens > 0
  if cfg.unique_tokens > 0 and not filtered:
    return 0.0, None
  lengths = doc_lengths(source, cache_dir)
  records = kept_records(lengths, cfg.min_doc_tokens, cfg.max_doc_tokens) if filtered else None
  unique = float(lengths.sum() if records is None else lengths[records].sum())
  if filtered and not len(records):
    raise PlanError(f"{leaf.field}: no document of source {leaf.name!r} has "
                    f"{cfg.min_doc_tokens}..{cfg.max_doc_tokens or 'any'} tokens")
  return unique, records


def unique_tokens(config: ml_collections.ConfigDict) -> dict[str, float]:
  """For the planner: unique tokens of each source whose config leaves them 0 (counted once, then
  read from the cache); sources that declare theirs are not opened."""
  cache_dir = corpus.cache_dir(config.data)
  out = {}
  for leaf in leaves(config.data.sources):
    if leaf.cfg.unique_tokens <= 0:
      source = open_source(leaf, cache_dir)
      out[leaf.name] = (documents_in_play(leaf, source, cache_dir) if source.mode == "text"
                        else items_in_play(leaf, source, cache_dir, config))[0]
  return out


# Skip reasons of chat and pairs items, coded in their measured stats (0 = kept).
ITEM_REASONS = ("", "malformed_json", "missing_field", "invalid_utf8", "empty", "bad_messages",
                "no_assistant", "too_long", "empty_prompt", "empty_completion", "same_completion",
                "bad_ids", "other")


def item_stats(source: Source, cache_dir: str, key: str, item_fn, batch: int = 256) -> np.ndarray:
  """int32 [len(source), 3] of a chat or pairs source: tokens of each item as packed (its
  sequences), its target tokens (loss_mask sum), and its skip reason (ITEM_REASONS index; 0 =
  kept, then both counts are 0). `key` names the settings item_fn depends on (cache key)."""
  path = os.path.join(cache_dir, "measure", f"{source.fingerprint}-{key}-v{_VERSION}.npy")
  cached = load_npy(path)
  if cached is not None and cached.shape == (len(source), 3):
    return cached
  stats = np.zeros((len(source), 3), np.int32)
  skipped: dict[str, int] = {}
  for start in range(0, len(source), batch):
    indices = range(start, min(start + batch, len(source)))
    for i, record in zip(indices, source.read(indices)):
      item = record if isinstance(record, Skip) else item_fn(record.value)
      if isinstance(item, (Skip, str)):
        reason = item.reason if isinstance(item, Skip) else item
        count_skip(skipped, source.name, item if isinstance(item, Skip) else Skip(item, record.where),
                   during="measuring")
        stats[i, 2] = ITEM_REASONS.index(reason) if reason in ITEM_REASONS else len(ITEM_REASONS) - 1
        continue
      stats[i, 0] = sum(len(ids) for ids, _ in item.seqs)
      stats[i, 1] = sum(int(mask.sum()) for _, mask in item.seqs)
  if skipped:
    logging.warning("source %s: measuring its %d records found %d items; skipped %s", source.name,
                    len(source), int((stats[:, 2] == 0).sum()), skipped)
  save_npy(path, stats)
  return stats


def item_fn(source: Source, config: ml_collections.ConfigDict):
  """(cache key, the function turning a record's value into a packer item) of a chat or pairs
  source under `config` (seq_len, and data.long_conversations for chat)."""
  import functools
  from phi4_jax.data import chat, pairs
  if source.mode == "chat":
    mode = config.data.long_conversations
    return (f"chat-{config.seq_len}-{mode}",
            functools.partial(chat.chat_item, seq_len=config.seq_len, long_conversations=mode))
  return f"pairs-{config.seq_len}", functools.partial(pairs.pair_item, seq_len=config.seq_len)


def items_in_play(leaf: Leaf, source: Source, cache_dir: str,
                  config: ml_collections.ConfigDict) -> tuple[float, np.ndarray | None]:
  """documents_in_play for a chat or pairs source: always measured (unique tokens of the items
  kept; length filters on an item's tokens), and refused naming the source when no kept item has
  a target token (a chat source whose conversations have no assistant turn, or none that fits)."""
  cfg = leaf.cfg
  stats = item_stats(source, cache_dir, *item_fn(source, config))
  lengths = stats[:, 0].astype(np.int64)
  filtered = cfg.min_doc_tokens > 0 or cfg.max_doc_tokens > 0
  keep = (stats[:, 2] == 0) & (lengths >= cfg.min_doc_tokens)
  if cfg.max_doc_tokens:
    keep &= lengths <= cfg.max_doc_tokens
  records = np.flatnonzero(keep) if filtered else None
  if not stats[keep, 1].sum():
    reasons = np.bincount(stats[:, 2], minlength=len(ITEM_REASONS))
    why = ", ".join(f"{ITEM_REASONS[r]} {n}" for r, n in enumerate(reasons) if r and n) or "none"
    what = ("conversation with an assistant turn" if source.mode == "chat" else "pair")
    bounds = (f" with {cfg.min_doc_tokens}..{cfg.max_doc_tokens or 'any'} tokens" if filtered else "")
    raise PlanError(f"{leaf.field}: source {leaf.name!r} has no {what} to train on{bounds} "
                    f"(config.seq_len={config.seq_len}; of its {len(source)} records, skipped: {why})")
  return float(lengths[keep].sum()), records

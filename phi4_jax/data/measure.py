"""Measuring a source: the token count of every document, cached beside the file indexes.

A document's count includes its `<|endoftext|>` separator, so a source's unique tokens are the
sum over its documents and equal the tokens one epoch puts in packed rows. The length filters
(`min_doc_tokens` / `max_doc_tokens`) pick the documents in play from these counts.

Chat and pairs sources (post-training) are always measured, with the tokenization training uses
(item_stats: a conversation as cut to seq_len, a pair's two sequences), so a source with nothing
to train on is refused when the iterator is built, naming it, and so is a DPO stage's pairs
source with fewer usable pairs than config.dpo.min_pairs (its files, the usable count and why the
others were skipped). Their skipped records are reported once, when the iterator is built: one
warning per source and reason, with how many of its records and the first few files and lines
(skip_report), not one per record.
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
_ITEM_VERSION = "2"  # item_stats': bump when chat or pairs items change (2: an empty reply is <|im_end|>)
_FIRST_PLACES = 3  # skipped records named by file and line per source and reason


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
                "bad_ids", "cut_long", "other")
REASON_TEXT = {  # the report's words for a reason
    "cut_long": "turns past config.seq_len cut off, the rest trained on",
    "same_completion": "identical chosen and rejected", "empty_completion": "a completion with no token",
    "empty_prompt": "no prompt token", "too_long": "longer than config.seq_len",
    "missing_field": "a field missing or of the wrong type", "bad_messages": "malformed messages",
    "no_assistant": "no assistant turn", "bad_ids": "token ids not in [0, vocab)",
    "malformed_json": "not JSON", "invalid_utf8": "not UTF-8", "empty": "a blank line"}


def item_stats(source: Source, cache_dir: str, key: str, item_fn, batch: int = 256) -> np.ndarray:
  """int32 [len(source), 4] of a chat or pairs source: tokens of each item as packed (its
  sequences), its target tokens (loss_mask sum), its skip reason (ITEM_REASONS index; 0 = kept,
  then both counts are 0) and the note of a kept item (ITEM_REASONS index, e.g. cut_long; 0 =
  none). `key` names the settings item_fn depends on (cache key)."""
  path = os.path.join(cache_dir, "measure", f"{source.fingerprint}-{key}-v{_ITEM_VERSION}.npy")
  cached = load_npy(path)
  if cached is not None and cached.shape == (len(source), 4):
    return cached
  code = lambda reason: ITEM_REASONS.index(reason) if reason in ITEM_REASONS else len(ITEM_REASONS) - 1
  stats = np.zeros((len(source), 4), np.int32)
  for start in range(0, len(source), batch):
    indices = range(start, min(start + batch, len(source)))
    for i, record in zip(indices, source.read(indices)):
      item = record if isinstance(record, Skip) else item_fn(record.value)
      if isinstance(item, (Skip, str)):
        stats[i, 2] = code(item.reason if isinstance(item, Skip) else item)
        continue
      stats[i, 0] = sum(len(ids) for ids, _ in item.seqs)
      stats[i, 1] = sum(int(mask.sum()) for _, mask in item.seqs)
      stats[i, 3] = code(item.note) if item.note else 0
  save_npy(path, stats)
  return stats


def files_of(source: Source, shown: int = 3) -> str:
  """The source's files for a message: all of them, or the first `shown` and how many."""
  if len(source.files) <= shown:
    return ", ".join(source.files)
  return f"{', '.join(source.files[:shown])}, ... ({len(source.files)} files)"


def skip_reasons(source: Source, codes: np.ndarray) -> list[tuple[int, str]]:
  """(how many, why) per reason of `codes` (a column of item_stats: skip reasons or notes), most
  first: (12, "same_completion (identical chosen and rejected; first: F:3, F:5, F:9, ...)"), the
  first _FIRST_PLACES places read back from the files (so a cached measurement names them too)."""
  counts = np.bincount(codes, minlength=len(ITEM_REASONS))
  out = []
  for code in sorted(np.flatnonzero(counts[1:]) + 1, key=lambda c: (-counts[c], c)):
    first = np.flatnonzero(codes == code)[:_FIRST_PLACES]
    places = ", ".join(r.where for r in source.read(first))
    text = REASON_TEXT.get(ITEM_REASONS[code])
    out.append((int(counts[code]), f"{ITEM_REASONS[code]} ({f'{text}; ' if text else ''}first: {places}"
                                   f"{', ...' if counts[code] > len(first) else ''})"))
  return out


def skip_report(source: Source, stats: np.ndarray) -> list[str]:
  """The warnings for a measured chat or pairs source's skipped (and cut) records, one line per
  reason: `pairs source 'judge' (F): skipped 12 of its 13 records: same_completion (...; first:
  F:3, ...)`."""
  head = f"{source.mode} source {source.name!r} ({files_of(source)}):"
  skipped, noted = skip_reasons(source, stats[:, 2]), skip_reasons(source, stats[:, 3])
  return ([f"{head} skipped {n} of its {len(source)} records: {why}" for n, why in skipped]
          + [f"{head} kept {n} of its {len(source)} records with a note: {why}" for n, why in noted])


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
  kept; length filters on an item's tokens), its skipped records reported (skip_report), and
  refused naming the source when no kept item has a target token (a chat source whose
  conversations have no assistant turn, or none that fits) or, in a DPO stage, when it has fewer
  usable pairs than config.dpo.min_pairs (check_min_pairs)."""
  cfg = leaf.cfg
  stats = item_stats(source, cache_dir, *item_fn(source, config))
  for line in skip_report(source, stats):
    logging.warning("%s", line)
  lengths = stats[:, 0].astype(np.int64)
  filtered = cfg.min_doc_tokens > 0 or cfg.max_doc_tokens > 0
  keep = (stats[:, 2] == 0) & (lengths >= cfg.min_doc_tokens)
  if cfg.max_doc_tokens:
    keep &= lengths <= cfg.max_doc_tokens
  records = np.flatnonzero(keep) if filtered else None
  check_min_pairs(leaf, source, config, stats, int(keep.sum()))
  if not stats[keep, 1].sum():
    reasons = np.bincount(stats[:, 2], minlength=len(ITEM_REASONS))
    why = ", ".join(f"{ITEM_REASONS[r]} {n}" for r, n in enumerate(reasons) if r and n) or "none"
    what = ("conversation with an assistant turn" if source.mode == "chat" else "pair")
    bounds = (f" with {cfg.min_doc_tokens}..{cfg.max_doc_tokens or 'any'} tokens" if filtered else "")
    raise PlanError(f"{leaf.field}: source {leaf.name!r} has no {what} to train on{bounds} "
                    f"(config.seq_len={config.seq_len}; of its {len(source)} records, skipped: {why})")
  return float(lengths[keep].sum()), records


def check_min_pairs(leaf: Leaf, source: Source, config: ml_collections.ConfigDict, stats: np.ndarray,
                    usable: int) -> None:
  """A DPO stage's (config.dpo's) pairs source with fewer than config.dpo.min_pairs usable pairs
  (kept and within the length filters) is refused, naming the source, its files, the usable count
  and why the others were left out."""
  dpo = config.get("dpo") if source.mode == "pairs" else None
  need = int(dpo.get("min_pairs", 1)) if dpo is not None else 0
  if usable >= need:
    return
  cfg, why = leaf.cfg, [f"{n} {reason}" for n, reason in skip_reasons(source, stats[:, 2])]
  filtered = int((stats[:, 2] == 0).sum()) - usable
  if filtered:
    why.append(f"{filtered} outside {leaf.field}.min_doc_tokens..max_doc_tokens "
               f"({cfg.min_doc_tokens}..{cfg.max_doc_tokens or 'any'} tokens)")
  raise PlanError(f"{leaf.field}: source {leaf.name!r} ({files_of(source)}) has {usable} usable "
                  f"pair{'' if usable == 1 else 's'} of its {len(source)} records, fewer than "
                  f"config.dpo.min_pairs={need} (config.seq_len={config.seq_len}); left out: "
                  f"{'; '.join(why) or 'none'}. Make more pairs, or lower config.dpo.min_pairs")

"""ConfigDict builders for `config.data`: sources, nested mixtures and pipeline settings.

Stage files (experiments/*.py) carry the numbers; these functions give every field its default
and a one-line comment, so `--config.data.sources.web.globs=/data/web/*.parquet` works.
"""

from __future__ import annotations

import ml_collections


def source(globs: str, fraction: float, **overrides) -> ml_collections.ConfigDict:
  """A leaf source: files of documents and its share of the stage's training tokens.

  format "chat" (SFT) or "pairs" (DPO) name what the records hold (the file type is then from
  each extension: jsonl, jsonl.gz, parquet, arrayrecord); their text_field defaults to "messages"
  (chat: the field holding the list of {role, content} messages) and "" (pairs: fixed fields,
  see data/pairs.py)."""
  fmt = overrides.get("format", "")
  s = ml_collections.ConfigDict()
  s.globs = globs  # comma-separated path globs (~, $VARS and ** expand); "corpus:<name>" = embedded
  s.format = ""  # jsonl | jsonl.gz | parquet | arrayrecord | chat | pairs; "" = from each file's extension
  # field holding the document text (chat: the messages list; pairs: unused, ""); "" = ArrayRecord raw text
  s.text_field = {"chat": "messages", "pairs": ""}.get(fmt, "text")
  s.fraction = float(fraction)  # share of this mixture's tokens (siblings sum to 1)
  s.unique_tokens = 0.0  # tokens in one epoch (documents + separators); 0 = measure and cache
  s.max_epochs = 0.0  # refuse plans repeating this source more often; 0 = no limit
  s.min_doc_tokens = 0  # keep only documents with at least this many tokens
  s.max_doc_tokens = 0  # keep only documents with at most this many tokens; 0 = no limit
  s.update(overrides)
  return s


def mixture(fraction: float, sources: dict[str, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """A mixture used as a source of an enclosing mixture (e.g. midtraining's pretraining replay)."""
  m = ml_collections.ConfigDict()
  m.fraction = float(fraction)  # share of the enclosing mixture's tokens
  m.sources = ml_collections.ConfigDict(sources)  # name -> source(...) or mixture(...)
  return m


def data(sources: dict[str, ml_collections.ConfigDict], **overrides) -> ml_collections.ConfigDict:
  """`config.data`: the mixture (Table 5 as data) and how the grain pipeline reads it."""
  d = ml_collections.ConfigDict()
  d.sources = ml_collections.ConfigDict(sources)  # name -> source(...) or mixture(...); ids sorted by name
  d.total_tokens = 0.0  # token budget of the plan; 0 = steps * global_batch_size * seq_len
  d.epoch_margin = 0.02  # streams hold whole epochs covering planned epochs x (1 + margin)
  d.docs_per_batch = 64  # documents read and tokenized together: one grain element
  d.read_threads = 2  # grain threads per source reading and tokenizing document batches
  d.tokenizer_threads = 1  # tiktoken threads inside one document batch
  d.prefetch = 4  # document batches buffered ahead per source (and per worker process)
  d.worker_count = 0  # grain worker processes per source (mp_prefetch); 0 = threads in this process
  d.shards = 0  # logical data shards (batches identical for any process count dividing it); 0 = processes
  d.cache_dir = ""  # embedded corpus, file indexes, token counts; "" = $PHI4_JAX_CACHE or ~/.cache/phi4_jax
  d.long_conversations = "cut"  # chat: a conversation over seq_len: "cut" at a turn boundary | "drop"
  d.pack_bins = 8  # chat/pairs: rows open at once for first-fit packing of whole items (1 = next fit)
  d.pairs_per_row = 4  # pairs: pair slots per DPO row (pair j: segments 2j+1 chosen, 2j+2 rejected)
  d.update(overrides)
  return d


def chat_source(globs: str, fraction: float, **overrides) -> ml_collections.ConfigDict:
  """An SFT source: records with a `messages` list of {role, content} (source(format="chat"))."""
  return source(globs, fraction, **{"format": "chat", **overrides})


def pairs_source(globs: str, fraction: float, **overrides) -> ml_collections.ConfigDict:
  """A DPO source: preference pairs in one of data/pairs.py's forms (source(format="pairs"))."""
  return source(globs, fraction, **{"format": "pairs", **overrides})


def embedded_sft_sources() -> dict[str, ml_collections.ConfigDict]:
  """SFT's mix (math, parity, identity, safety) on the embedded post-training corpus."""
  return {"math": chat_source("corpus:sft_math", 0.3), "parity": chat_source("corpus:sft_parity", 0.6),
          "identity": chat_source("corpus:sft_identity", 0.05),
          "safety": chat_source("corpus:sft_safety", 0.05)}


def embedded_dpo_sources(heldout: bool = False) -> dict[str, ml_collections.ConfigDict]:
  """DPO's pairs on the embedded corpus (heldout: the evaluation split, disjoint from training's)."""
  return {"math": pairs_source("corpus:dpo_pairs_heldout" if heldout else "corpus:dpo_pairs", 1.0)}

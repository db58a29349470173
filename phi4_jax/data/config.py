"""ConfigDict builders for `config.data`: sources, nested mixtures and pipeline settings.

Stage files (experiments/*.py) carry the numbers; SOURCE, MIXTURE and DATA declare every field's
default, rule and one-line help (data/check.py applies the rules), so
`--config.data.sources.web.globs=/data/web/*.parquet` works.
"""

from __future__ import annotations

import ml_collections

from phi4_jax import fields

F = fields.Field
SOURCE = fields.Group(
    globs=F("", fields.string(),
            'comma-separated path globs (~, $VARS and ** expand); "corpus:<name>" = embedded'),
    format=F("", fields.string(),
             'jsonl | jsonl.gz | parquet | arrayrecord | chat | pairs; "" = from each file\'s extension'),
    text_field=F("text", fields.string(), 'field holding the document text (chat: the messages list; pairs: '
                 'unused, ""); "" = ArrayRecord raw text'),
    fraction=F(1.0, fields.number(0, 1), "share of this mixture's tokens (siblings sum to 1)"),
    unique_tokens=F(0.0, fields.number(0),
                    "tokens in one epoch (documents + separators); 0 = measure and cache"),
    max_epochs=F(0.0, fields.number(0), "refuse plans repeating this source more often; 0 = no limit"),
    min_doc_tokens=F(0, fields.integer(0), "keep only documents with at least this many tokens"),
    max_doc_tokens=F(0, fields.integer(0), "keep only documents with at most this many tokens; 0 = no limit"),
)
MIXTURE = fields.Group(
    fraction=F(1.0, fields.number(0, 1), "share of the enclosing mixture's tokens"),
    sources=F({}, None, "name -> source(...) or mixture(...)"),
)
DATA = fields.Group(
    sources=F({}, None, "name -> source(...) or mixture(...); ids sorted by name"),
    total_tokens=F(0.0, fields.number(0),
                   "token budget of the plan; 0 = steps * global_batch_size * seq_len"),
    epoch_margin=F(0.02, fields.number(0),
                   "streams hold whole epochs covering planned epochs x (1 + margin)"),
    docs_per_batch=F(64, fields.integer(1), "documents read and tokenized together: one grain element"),
    read_threads=F(2, fields.integer(0), "grain threads per source reading and tokenizing document batches"),
    tokenizer_threads=F(1, fields.integer(1), "tiktoken threads inside one document batch"),
    prefetch=F(4, fields.integer(0), "document batches buffered ahead per source (and per worker process)"),
    worker_count=F(0, fields.integer(0),
                   "grain worker processes per source (mp_prefetch); 0 = threads in this process"),
    shards=F(0, fields.integer(0),
             "logical data shards (batches identical for any process count dividing it); 0 = processes"),
    cache_dir=F("", fields.string(),
                'embedded corpus, file indexes, token counts; "" = $PHI4_JAX_CACHE or ~/.cache/phi4_jax'),
    long_conversations=F("cut", fields.string(),
                         'chat: a conversation over seq_len: "cut" at a turn boundary | "drop"'),
    pack_bins=F(8, fields.integer(1),
                "chat/pairs: rows open at once for first-fit packing of whole items (1 = next fit)"),
    pairs_per_row=F(4, fields.integer(1),
                    "pairs: pair slots per DPO row (pair j: segments 2j+1 chosen, 2j+2 rejected)"),
)


def source(globs: str, fraction: float, **overrides) -> ml_collections.ConfigDict:
  """A leaf source: files of documents and its share of the stage's training tokens.

  format "chat" (SFT) or "pairs" (DPO) name what the records hold (the file type is then from
  each extension: jsonl, jsonl.gz, parquet, arrayrecord); their text_field defaults to "messages"
  (chat: the field holding the list of {role, content} messages) and "" (pairs: fixed fields,
  see data/pairs.py)."""
  text_field = {"chat": "messages", "pairs": ""}.get(overrides.get("format", ""), "text")
  return SOURCE.config(**{"globs": globs, "text_field": text_field, "fraction": float(fraction), **overrides})


def mixture(fraction: float, sources: dict[str, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """A mixture used as a source of an enclosing mixture (e.g. midtraining's pretraining replay)."""
  m = MIXTURE.config(fraction=float(fraction))
  m.sources = ml_collections.ConfigDict(sources)
  return m


def data(sources: dict[str, ml_collections.ConfigDict], **overrides) -> ml_collections.ConfigDict:
  """`config.data`: the mixture (Table 5 as data) and how the grain pipeline reads it."""
  d = DATA.config()
  d.sources = ml_collections.ConfigDict(sources)
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
  """DPO's pairs on the embedded corpus (heldout: the evaluation splits, disjoint from training's:
  math pairs and held-out parity questions' right against wrong answers, half and half)."""
  if heldout:
    return {"math": pairs_source("corpus:dpo_pairs_heldout", 0.5),
            "parity": pairs_source("corpus:dpo_parity_heldout", 0.5)}
  return {"math": pairs_source("corpus:dpo_pairs", 1.0)}

"""ConfigDict builders for `config.data`: sources, nested mixtures and pipeline settings.

Stage files (experiments/*.py) carry the numbers; these functions give every field its default
and a one-line comment, so `--config.data.sources.web.globs=/data/web/*.parquet` works.
"""

from __future__ import annotations

import ml_collections


def source(globs: str, fraction: float, **overrides) -> ml_collections.ConfigDict:
  """A leaf source: files of documents and its share of the stage's training tokens."""
  s = ml_collections.ConfigDict()
  s.globs = globs  # comma-separated path globs (~, $VARS and ** expand); "corpus:<name>" = embedded
  s.format = ""  # jsonl | jsonl.gz | parquet | arrayrecord; "" = from each file's extension
  s.text_field = "text"  # field holding the document text; "" = ArrayRecord records are raw text
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
  d.update(overrides)
  return d

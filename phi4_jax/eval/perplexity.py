"""Perplexity per source: loss and bits per byte of each pretraining source's documents.

The sources are the `config.data.sources` leaves of a stage config (default the colab
pretraining preset: the embedded corpus's five Table 5 sources). Each gives its last
settings.limit documents (default 8), which should be documents the model did not train on: pass
a config whose globs name held-out files (`--perplexity_config=my_heldout.py:arg`); the embedded
corpus's documents are all in a colab run's data, so there the figure is in-sample. A document is
scored on its first settings.perplexity_tokens tokens (after <|endoftext|>; at most the model's
max_seq_len - 1), and its bytes are those tokens' bytes.
"""

from __future__ import annotations

import math

from phi4_jax import configs
from phi4_jax.data import corpus
from phi4_jax.data.planner import leaves
from phi4_jax.data.sources import Skip, open_source
from phi4_jax.eval.model import TOKENIZER, Model

DEFAULT_DOCS = 8


def documents(spec: str, per_source: int) -> dict[str, list[str]]:
  """{source name: its last `per_source` readable documents} of the config `spec`'s text sources."""
  config = configs.load(spec)
  cache = corpus.cache_dir(config.data)
  out = {}
  for leaf in leaves(config.data.sources):
    if leaf.cfg.format in ("chat", "pairs"):
      continue
    source = open_source(leaf, cache)
    texts = [t for t in source.read(range(max(0, len(source) - 4 * per_source), len(source)))
             if not isinstance(t, Skip)]
    out[leaf.name] = texts[-per_source:]
  if not out:
    raise ValueError(f"{spec}: config.data.sources has no text sources")
  return out


def run(model: Model, settings) -> dict:
  """{source: {"loss", "bits_per_byte", "tokens", "docs"}} and their token-weighted mean."""
  docs = documents(settings.perplexity_config, settings.limit or DEFAULT_DOCS)
  names, completions = [], []
  keep = min(settings.perplexity_tokens or model.cfg.max_seq_len, model.cfg.max_seq_len - 1)
  for name, texts in docs.items():
    for text in texts:
      names.append(name)
      completions.append(TOKENIZER.encode_ordinary(text)[:keep])
  scores = model.score([[TOKENIZER.bos_id]] * len(completions), completions)
  out, total = {}, {"nll": 0.0, "tokens": 0, "bytes": 0}
  for name in docs:
    rows = [i for i, n in enumerate(names) if n == name]
    nll = -sum(float(scores[i].sum()) for i in rows)
    tokens = sum(len(completions[i]) for i in rows)
    nbytes = sum(len(TOKENIZER.decode_bytes(completions[i])) for i in rows)
    out[name] = {"loss": nll / tokens, "bits_per_byte": nll / math.log(2) / nbytes, "tokens": tokens,
                 "docs": len(rows)}
    total = {"nll": total["nll"] + nll, "tokens": total["tokens"] + tokens, "bytes": total["bytes"] + nbytes}
  out["all"] = {"loss": total["nll"] / total["tokens"],
                "bits_per_byte": total["nll"] / math.log(2) / total["bytes"], "tokens": total["tokens"],
                "docs": len(names)}
  return out

"""A curation run's config: which steps run, and each step's settings as its own group
(`--config.<group>.<field>=v` on the command line, `config.<stage>.curate.<group>.<field>` in a recipe's
curate stage, curate/stage.py)."""

from __future__ import annotations

import ml_collections

from phi4_jax import fields
from phi4_jax.curate import dedup, filters
from phi4_jax.data import overlap

CLASSIFY = fields.Group(
    classifier=fields.Field("", fields.string(),
                            "a trained classifier's folder (python -m phi4_jax.curate train)"),
    threshold=fields.Field(3.0, fields.number(), "keep a document whose score rounds to at least this"),
)
DECONTAM = fields.Group(
    overlap.SETTINGS,
    benchmarks=fields.Field("", fields.string(), "data/decontam.py's --benchmarks (humaneval, embedded:<set>, globs)"),
)
RUN = fields.Group(
    steps=fields.Field("filter,dedup", fields.string(), "comma-separated, of filter, dedup, classify, decontam"),
    on_unreadable=fields.Field("stop", fields.choice(("stop", "skip")),
                               "an unreadable file stops the run, or is named, left out and counted"),
    cache_dir=fields.Field("", fields.string(), 'where record indexes are cached ("" = DIR/cache)'),
    filter=fields.Field(filters.FIELDS, None, "heuristic filters (curate/filters.py)"),
    dedup=fields.Field(dedup.FIELDS, None, "exact and MinHash deduplication (curate/dedup.py)"),
    classify=fields.Field(CLASSIFY, None, "the quality classifier's threshold"),
    decontam=fields.Field(DECONTAM, None, "decontamination against benchmarks (data/overlap.py's rule)"),
)


def config(**overrides) -> ml_collections.ConfigDict:
  return RUN.config(**overrides)


def check(config: ml_collections.ConfigDict, prefix: str = "config") -> None:
  """Every field known and in range (ValueError naming it)."""
  RUN.check(config, prefix)

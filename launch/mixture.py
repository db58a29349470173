"""Sweeping one source's share of a data mixture: its siblings are rescaled to keep the sum at 1."""

from __future__ import annotations

import ml_collections


def _siblings(config: ml_collections.ConfigDict, source: str) -> tuple[str, ml_collections.ConfigDict]:
  """(dotted key of the mixture holding `source`, that mixture's sources) for "web" or "replay/web"."""
  *parents, _ = source.split("/")
  key, sources = "data.sources", config.data.sources
  for name in parents:
    if name not in sources or "sources" not in sources[name]:
      raise KeyError(f"config.{key} has no mixture {name!r} (source {source!r})")
    key, sources = f"{key}.{name}.sources", sources[name].sources
  return key, sources


def with_fraction(config: ml_collections.ConfigDict, source: str, fraction: float) -> dict[str, float]:
  """Dotted-key overrides giving `source` this fraction and scaling its siblings to share the rest.

  source: a name in config.data.sources, or "mixture/name" inside a nested mixture.
  """
  key, sources = _siblings(config, source)
  name = source.split("/")[-1]
  if name not in sources:
    raise KeyError(f"config.{key} has no source {name!r}; it has {sorted(sources)}")
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction of {source!r} must be in [0, 1], got {fraction}")
  others = {n: float(s.fraction) for n, s in sources.items() if n != name}
  rest = sum(others.values())
  if rest <= 0 and fraction < 1:
    raise ValueError(f"config.{key}.{name} is the only source with a share; there is nothing to "
                     f"rebalance to give it {fraction}")
  overrides = {f"{key}.{name}.fraction": float(fraction)}
  for other, share in others.items():
    overrides[f"{key}.{other}.fraction"] = share * (1.0 - fraction) / rest if rest > 0 else 0.0
  return overrides


def axis(config: ml_collections.ConfigDict, source: str, fractions) -> dict[float, dict[str, float]]:
  """A sweep axis (label -> overrides) over fractions of one source."""
  return {f: with_fraction(config, source, f) for f in fractions}

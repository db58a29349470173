"""Defining config sweeps: one base config, overrides per point (experiments/sweeps/<name>.py).

A sweep file defines `get_sweep(arg) -> Sweep`, built from `grid` of axes (`axis` for one config
key, `fraction_axis` for one source's share of a data mixture) or `listed` overrides. Running,
submitting and summarising the points is launch/sweep.py's part.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from phi4_jax import configs


@dataclasses.dataclass(frozen=True)
class Point:
  name: str  # its workdir under the sweep's, and its run name
  labels: dict  # axis -> value: the summary's columns
  overrides: dict  # dotted config key -> value


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  config: str  # the base config, "experiments/<stage>.py:<preset>"
  points: tuple[Point, ...]
  overrides: dict = dataclasses.field(default_factory=dict)  # applied to every point first

  def __post_init__(self):
    object.__setattr__(self, "points", tuple(self.points))
    if not self.points:
      raise ValueError(f"sweep {self.name!r} has no points")
    names = [p.name for p in self.points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise ValueError(f"sweep {self.name!r} has several points named {duplicates}")

  def overrides_of(self, point: Point) -> dict:
    return {**self.overrides, **point.overrides}

  def args(self, point: Point, workdir: str) -> list[str]:
    """phi4_jax.main's flags for the point, run in workdir."""
    return [*configs.config_args(self.config, self.overrides_of(point)), f"--workdir={workdir}"]

  def point_config(self, point: Point) -> ml_collections.ConfigDict:
    """The config the point's flags (`args`) build: the same flags, the same parsing."""
    return configs.load(self.config, self.overrides_of(point))


def label(value: Any) -> str:
  """A point label as text: floats in %g (0.001, 3e-05), anything else as str."""
  return f"{value:g}" if isinstance(value, float) else str(value)


def axis(key: str, values: Iterable) -> dict:
  """An axis setting one dotted config key: {value: {key: value}}."""
  return {v: {key: v} for v in values}


def grid(**axes: Mapping[Any, dict]) -> tuple[Point, ...]:
  """The product of axes, each {label: overrides}; points are named like `lr=0.001_synthetic=0.4`."""
  points = []
  for combo in itertools.product(*(list(a.items()) for a in axes.values())):
    labels = {name: value for name, (value, _) in zip(axes, combo)}
    overrides = {k: v for _, o in combo for k, v in o.items()}
    name = "_".join(f"{n}={label(v)}" for n, v in labels.items())
    points.append(Point(re.sub(r"[^A-Za-z0-9_.=+-]", "-", name), labels, overrides))
  return tuple(points)


def listed(*overrides: dict) -> tuple[Point, ...]:
  """Points p0, p1, ... with the given overrides (also shown as the summary's columns)."""
  return tuple(Point(f"p{i}", dict(o), dict(o)) for i, o in enumerate(overrides))


def load(spec: str) -> Sweep:
  """`experiments/sweeps/<name>.py[:arg]` -> its get_sweep(arg); errors name --sweep."""
  try:
    sweep = configs.load_file(spec, "get_sweep")
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"--sweep={spec}: {e}") from e
  if not isinstance(sweep, Sweep):
    raise TypeError(f"--sweep={spec}: get_sweep returned {type(sweep).__name__}, not "
                    "phi4_jax.sweeps.Sweep")
  return sweep


def _mixture(config: ml_collections.ConfigDict, source: str) -> tuple[str, ml_collections.ConfigDict]:
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
  key, sources = _mixture(config, source)
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


def fraction_axis(config: ml_collections.ConfigDict, source: str, fractions) -> dict[float, dict[str, float]]:
  """A sweep axis (fraction -> overrides) over one source's share of config's data mixture."""
  return {f: with_fraction(config, source, f) for f in fractions}

"""The mixture planner: each source's epochs from the token budget, fractions and unique tokens.

epochs = fraction x total tokens / unique tokens (docs/RECIPE.md, Table 5). A nested mixture's sources
get the product of the fractions on their path. Plans whose fractions do not sum to 1, or that
repeat a source more than its `max_epochs`, are refused with the config field named.

Pure: it reads no files. Unique tokens come from the config, or counted by the caller
(measure.unique_tokens); `python -m phi4_jax.data.plan` (plan.py) prints a plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import ml_collections

SOURCES_FIELD = "config.data.sources"


class PlanError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Leaf:
  """A source that reads files, with its share of the whole stage's tokens."""
  name: str  # "web", or "replay/web" inside mixture "replay"
  field: str  # its config path, for messages
  fraction: float
  cfg: ml_collections.ConfigDict


def leaves(sources: ml_collections.ConfigDict, field: str = SOURCES_FIELD, prefix: str = "",
           scale: float = 1.0) -> list[Leaf]:
  """Flattens nested mixtures (names sorted at each level); checks fractions sum to 1."""
  if not sources:
    raise PlanError(f"{field}: no sources")
  fractions = {name: float(sources[name].fraction) for name in sorted(sources)}
  for name, f in fractions.items():
    if not 0.0 <= f <= 1.0 or math.isnan(f):
      raise PlanError(f"{field}.{name}.fraction: must be in [0, 1], got {f}")
  total = sum(fractions.values())
  if abs(total - 1.0) > 1e-6:
    shares = ", ".join(f"{n}={f:g}" for n, f in fractions.items())
    raise PlanError(f"{field}: fractions sum to {total:.6g}, not 1 ({shares})")
  out = []
  for name, f in fractions.items():
    node = sources[name]
    if "sources" in node:
      out += leaves(node.sources, f"{field}.{name}.sources", f"{prefix}{name}/", scale * f)
    else:
      out.append(Leaf(prefix + name, f"{field}.{name}", scale * f, node))
  return out


def budget(config: ml_collections.ConfigDict) -> float:
  """The plan's token budget: config.data.total_tokens, or all tokens the steps will consume."""
  total = float(config.data.total_tokens)
  if total < 0:
    raise PlanError(f"config.data.total_tokens: must be >= 0, got {total}")
  return total or float(config.steps) * config.global_batch_size * config.seq_len


@dataclasses.dataclass(frozen=True)
class SourcePlan:
  name: str
  fraction: float  # of the stage's tokens
  unique_tokens: float  # tokens in one epoch
  measured: bool  # unique_tokens counted from the files (else declared in the config)
  tokens: float  # planned training tokens from this source
  epochs: float
  max_epochs: float  # 0 = no limit


@dataclasses.dataclass(frozen=True)
class Plan:
  total_tokens: float
  sources: tuple[SourcePlan, ...]

  def to_dict(self) -> dict:
    return {"total_tokens": self.total_tokens, "sources": [dataclasses.asdict(s) for s in self.sources]}

  def table(self) -> str:
    head = ("source", "fraction", "unique tokens", "tokens", "epochs", "max epochs")
    rows = [(s.name, f"{100 * s.fraction:.1f}%",
             _human(s.unique_tokens) + (" (measured)" if s.measured else ""), _human(s.tokens),
             f"{s.epochs:.1f}", f"{s.max_epochs:g}" if s.max_epochs else "-") for s in self.sources]
    rows.append(("total", "100.0%", _human(sum(s.unique_tokens for s in self.sources)),
                 _human(self.total_tokens), "", ""))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, rows)])


def _human(n: float) -> str:
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.3g}{unit}"
  return f"{n:.0f}"


def make_plan(config: ml_collections.ConfigDict, measured: Mapping[str, float] | None = None) -> Plan:
  """The plan of `config`; `measured[leaf name]` gives the unique tokens where the config says 0."""
  total = budget(config)
  plans = []
  for leaf in leaves(config.data.sources):
    unique, is_measured = float(leaf.cfg.unique_tokens), False
    if unique <= 0:
      if measured is None or leaf.name not in measured:
        raise PlanError(f"{leaf.field}.unique_tokens: not declared, and not measured")
      unique, is_measured = float(measured[leaf.name]), True
      if unique <= 0:
        raise PlanError(f"{leaf.field}: source {leaf.name!r} has no documents to train on")
    epochs = leaf.fraction * total / unique
    max_epochs = float(leaf.cfg.max_epochs)
    if max_epochs and epochs > max_epochs + 1e-9:
      raise PlanError(
          f"source {leaf.name!r}: the plan repeats it {epochs:.2f} times, over its "
          f"{leaf.field}.max_epochs={max_epochs:g} ({100 * leaf.fraction:.1f}% of "
          f"{_human(total)} tokens over {_human(unique)} unique tokens); lower its fraction or "
          "the budget, or add data")
    plans.append(SourcePlan(leaf.name, leaf.fraction, unique, is_measured, leaf.fraction * total,
                            epochs, max_epochs))
  return Plan(total, tuple(plans))

"""Config fields declared once each (default, rule, one-line help) and the one check that applies them.

    DPO = fields.Group(
        beta=fields.Field(0.1, fields.number(0, low_open=True), "scale of the implicit reward"),
        loss_type=fields.Field("sigmoid", fields.choice(("sigmoid", "ipo")), "sigmoid (DPO) | ipo"))
    DPO.config(beta=0.2)           # ConfigDict of the defaults, overrides applied
    DPO.rules, DPO.help            # {name: Rule}, {name: one line}
    DPO.check(config.dpo, "config.dpo")   # unknown fields (closest names), then every rule

A Rule alone is a field's type and range: `fields.check(node, {"steps": fields.integer(1)}, prefix)`
raises ValueError naming prefix.field, the range and the value; `unknown` refuses fields no rule knows.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Rule:
  """A field's type and range: kind "int", "number" (ints too), "bool", "str" or "int_tuple"."""

  kind: str
  low: float | None = None
  high: float | None = None
  high_open: bool = False  # high itself is outside the range
  low_open: bool = False  # low itself is outside the range
  also: tuple = ()  # values allowed outside the range (e.g. 0 = "off")
  length: int | None = None  # int_tuple: its length
  choices: tuple = ()  # str: the allowed values (empty = any string)

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
    elif self.low is not None:
      text = f"{'>' if self.low_open else '>='} {self.low:g}"
    elif self.high is not None:
      text = f"{'<' if self.high_open else '<='} {self.high:g}"
    else:
      text = ""
    if self.also:
      text += f" (or {', '.join(map(str, self.also))})"
    return text

  def error(self, value: Any) -> str | None:
    """Why value breaks the rule, or None."""
    if self.kind == "bool":
      return None if isinstance(value, bool) else "must be true or false"
    if self.kind == "str":
      if not isinstance(value, str):
        return "must be a string"
      return None if not self.choices or value in self.choices else f"must be one of {self.choices}"
    if self.kind == "int_tuple":
      ok = isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                    for v in value)
      if not ok or (self.length is not None and len(value) != self.length):
        return f"must be a tuple of {self.length or 'some'} integers"
      return None
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not (is_int if self.kind == "int" else is_int or isinstance(value, Real) and not isinstance(value, bool)):
      return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
    if value in self.also:
      return None
    wanted = self.describe()
    if math.isnan(value) or not self._in_range(value):
      return f"must be {wanted}" if wanted else "must be finite"
    if math.isinf(value):
      return f"must be finite and {wanted}" if wanted else "must be finite"
    return None

  def _in_range(self, value) -> bool:
    if self.low is not None and (value < self.low or self.low_open and value == self.low):
      return False
    return self.high is None or not (value > self.high or self.high_open and value == self.high)


def number(low=None, high=None, *, high_open=False, low_open=False, also=()) -> Rule:
  return Rule("number", low, high, high_open, low_open, tuple(also))


def integer(low=None, high=None, *, also=()) -> Rule:
  return Rule("int", low, high, also=tuple(also))


def boolean() -> Rule:
  return Rule("bool")


def string() -> Rule:
  return Rule("str")


def choice(values) -> Rule:
  return Rule("str", choices=tuple(values))


def int_tuple(length: int) -> Rule:
  return Rule("int_tuple", length=length)


def check(node: Mapping, rules: Mapping[str, Rule], prefix: str) -> None:
  """Every field of `node` that has a rule obeys it; ValueError names `prefix.field`, the range and
  the value."""
  for name, rule in rules.items():
    if name in node:
      why = rule.error(node[name])
      if why:
        raise ValueError(f"{prefix}.{name}: {why}, got {node[name]!r}")


def unknown(names: Iterable[str], known: Iterable[str], prefix: str) -> None:
  """Refuses the first name not in `known`: `unknown field config.x (did you mean y?)`."""
  known = sorted(known)
  for name in sorted(names):
    if name not in known:
      close = difflib.get_close_matches(name, known, n=3)
      hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(known)}"
      raise ValueError(f"unknown field {prefix}.{name} ({hint})")


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: its default (a Group: a nested group of fields), its Rule (None: checked
  elsewhere) and its one-line help."""

  default: Any
  rule: Rule | None
  help: str


def attribute(default, rule: Rule | None, help: str) -> Any:
  """A dataclass attribute declared as a Field (Group.of_dataclass reads it back)."""
  return dataclasses.field(default=default, metadata={"field": Field(default, rule, help)})


class Group:
  """Fields declared once each, in order: Group(*bases, name=Field(...), ...) takes the bases' fields
  first; a keyword of the same name replaces one in place."""

  def __init__(self, *bases: "Group", **declared: Field):
    self.fields: dict[str, Field] = {}
    for base in bases:
      self.fields.update(base.fields)
    self.fields.update(declared)

  @classmethod
  def of_dataclass(cls, datacls) -> "Group":
    """The fields of a dataclass whose attributes are declared with `attribute`."""
    return cls(**{f.name: f.metadata["field"] for f in dataclasses.fields(datacls)})

  def without(self, *names: str) -> "Group":
    return Group(**{k: v for k, v in self.fields.items() if k not in names})

  def with_defaults(self, **defaults) -> "Group":
    """The same fields, rules and help with other defaults."""
    unknown(defaults, self.fields, "Group")
    return Group(self, **{k: dataclasses.replace(self.fields[k], default=v) for k, v in defaults.items()})

  @property
  def defaults(self) -> dict[str, Any]:
    """name -> default (a nested Group's as its ConfigDict)."""
    return {k: f.default.config() if isinstance(f.default, Group) else f.default
            for k, f in self.fields.items()}

  @property
  def rules(self) -> dict[str, Rule]:
    return {k: f.rule for k, f in self.fields.items() if f.rule is not None}

  @property
  def help(self) -> dict[str, str]:
    return {k: f.help for k, f in self.fields.items()}

  def config(self, **overrides) -> ml_collections.ConfigDict:
    """The defaults as a ConfigDict (a nested Group as a nested one), then `overrides`."""
    c = ml_collections.ConfigDict(self.defaults)
    c.update(overrides)
    return c

  def check(self, node: Mapping, prefix: str, complete: bool = False) -> None:
    """No unknown field (closest names suggested), none missing when `complete`, every rule obeyed,
    and nested groups checked the same way; ValueError names `prefix.field`."""
    unknown(node.keys(), self.fields, prefix)
    if complete:
      for name, f in self.fields.items():
        if name not in node:
          raise ValueError(f"{prefix}.{name}: missing (its default is {f.default!r})")
    check(node, self.rules, prefix)
    for name, f in self.fields.items():
      if isinstance(f.default, Group) and name in node:
        f.default.check(node[name], f"{prefix}.{name}", complete)

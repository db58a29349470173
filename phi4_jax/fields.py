"""Valid values of config fields, declared beside the fields, and the one check that applies them.

    RULES = {"peak_lr": fields.number(low=0), "b2": fields.number(0, 1, high_open=True),
             "steps": fields.integer(low=1), "tensorboard": fields.boolean()}
    fields.check(config.optimizer, RULES, "config.optimizer")   # ValueError naming field and range

`unknown` refuses fields that no rule knows, with the closest known names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any


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
    if not math.isfinite(value):
      return f"must be a finite number {self.describe()}".rstrip()
    if not self._in_range(value):
      return f"must be {self.describe()}"
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

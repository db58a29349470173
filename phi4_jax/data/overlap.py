"""Benchmark overlap as decontamination measures it (Phi-4 report, appendix B): text normalised to
words, benchmark items indexed as 13-grams and 7-grams, and a document's verdict.

Text is normalised to words (lower case; every run of characters that is not a letter or digit is
one separator). A document that shares a 13-gram with an item is `contaminated`, unless that
13-gram is allow-listed (listed, or found in at least `common_items` items: template text a
benchmark repeats). Otherwise its 7-gram overlap with the item it overlaps most, shared 7-grams /
min(7-grams of the document, 7-grams of the item), marks it `contaminated` at or above
`contaminated_ratio` and `partial` at or above `partial_ratio`. data/decontam.py removes such
documents from sources; data/families.py keeps them out of the embedded training splits.
"""

from __future__ import annotations

import collections
import dataclasses
import re

from phi4_jax import fields

LONG, SHORT = 13, 7  # n-gram lengths: an exact match, and the overlap ratio's
_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)
_SKIP_FIELDS = ("id", "task_id")


def words(text: str) -> list[str]:
  """Lower-case words with punctuation and whitespace normalised away."""
  return _SEPARATORS.sub(" ", text.lower()).split()


def ngrams(ws: list, n: int) -> set[tuple]:
  return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def item_text(record: dict) -> str:
  """A benchmark record's text: its string fields (and lists of strings) but `id`/`task_id`."""
  out = []
  for key, value in record.items():
    if key in _SKIP_FIELDS:
      continue
    if isinstance(value, str):
      out.append(value)
    elif isinstance(value, list):
      out += [v for v in value if isinstance(v, str)]
  return "\n".join(out)


@dataclasses.dataclass
class Settings:
  common_items: int = fields.attribute(
      5, fields.integer(1), "a 13-gram found in this many benchmark items is common (allow-listed)")
  contaminated_ratio: float = fields.attribute(
      0.5, fields.number(0, 1), "7-gram overlap at or above this: contaminated")
  partial_ratio: float = fields.attribute(
      0.2, fields.number(0, 1), "7-gram overlap at or above this: partial")
  drop_partial: bool = fields.attribute(False, fields.boolean(), "also remove partial documents")

  def __post_init__(self):
    SETTINGS.check(dataclasses.asdict(self), "decontam")


SETTINGS = fields.Group.of_dataclass(Settings)


@dataclasses.dataclass
class Index:
  """Benchmark n-grams: 13-gram -> first item, 7-gram -> items, each item's 7-gram count, and the
  allow-listed 13-grams."""
  items: list[str]
  long: dict[tuple, int]
  short: dict[tuple, list[int]]
  short_counts: list[int]
  allowed: set[tuple]

  def __post_init__(self):
    self.long_heads = {g[:SHORT] for g in self.long}  # the first 7 words of every 13-gram

  @classmethod
  def build(cls, items: list[tuple[str, str]], allow: list[str], common_items: int) -> "Index":
    """The index of `items`; allow-listed and common 13-grams, and the 7-grams inside them, are
    left out (boilerplate counts neither as a match nor toward an overlap)."""
    tokenized = [words(text) for _, text in items]
    long_items: dict[tuple, set[int]] = collections.defaultdict(set)
    for k, ws in enumerate(tokenized):
      for g in ngrams(ws, LONG):
        long_items[g].add(k)
    allowed = {tuple(words(line)) for line in allow if len(words(line)) == LONG}
    allowed |= {g for g, ks in long_items.items() if len(ks) >= common_items}
    boilerplate = set().union(*(ngrams(list(g), SHORT) for g in allowed)) if allowed else set()
    short: dict[tuple, list[int]] = collections.defaultdict(list)
    counts = []
    for k, ws in enumerate(tokenized):
      grams = ngrams(ws, SHORT) - boilerplate
      for g in grams:
        short[g].append(k)
      counts.append(len(grams))
    return cls([i for i, _ in items], {g: min(ks) for g, ks in long_items.items() if g not in allowed},
               dict(short), counts, allowed)

  def verdict(self, text: str, settings: Settings) -> dict | None:
    """None for a clean document, else {"verdict", "item", and "ngram" or "ratio"}."""
    ws = words(text)
    grams = [tuple(ws[i:i + SHORT]) for i in range(len(ws) - SHORT + 1)]
    for i in range(len(ws) - LONG + 1):  # a 13-gram is only looked up where its first 7 words could start one
      if grams[i] in self.long_heads:
        g = tuple(ws[i:i + LONG])
        if g in self.long:
          return {"verdict": "contaminated", "item": self.items[self.long[g]], "ngram": " ".join(g)}
    unique = set(grams)
    shared = collections.Counter()
    for g in unique & self.short.keys():
      for k in self.short[g]:
        shared[k] += 1
    if not shared:
      return None
    ratio, k = max((n / max(1, min(len(unique), self.short_counts[k])), k) for k, n in shared.items())
    for name, threshold in (("contaminated", settings.contaminated_ratio), ("partial", settings.partial_ratio)):
      if ratio >= threshold:
        return {"verdict": name, "item": self.items[k], "ratio": round(ratio, 4)}
    return None

"""Benchmark overlap as decontamination measures it (Phi-4 report, appendix B): text normalised to
words, benchmark items indexed as 13-grams and 7-grams, and a document's verdict.

Text is normalised to words (lower case; every run of characters that is not a letter or digit is
one separator). A document that shares a 13-gram with an item is `contaminated`, unless that
13-gram is allow-listed (listed, or found in at least `common_items` items: template text a
benchmark repeats). Otherwise its 7-gram overlap with the item it overlaps most, shared 7-grams /
min(7-grams of the document, 7-grams of the item), marks it `contaminated` at or above
`contaminated_ratio` and `partial` at or above `partial_ratio`. data/decontam.py removes such
documents from sources; data/families.py keeps them out of the embedded training splits.

Index.verdicts works on many documents at once: their words become ids (an item's word its
vocabulary number), each window of 7 and 13 ids is hashed with numpy and looked up among the
items' hashed n-grams, and every hash hit is checked word by word, so a hash collision never
makes a match (nor merges two distinct 7-grams of a document).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import itertools

import numpy as np

from phi4_jax import fields

LONG, SHORT = 13, 7  # n-gram lengths: an exact match, and the overlap ratio's
_SKIP_FIELDS = ("id", "task_id")


# words() is lower(), then re.sub(r"[\W_]+", " "), then split(), done sooner: ASCII text in one translate
# (\w is [a-zA-Z0-9_] there), other text lowered, its ASCII bytes translated alike, and each character
# beyond ASCII that is neither alphanumeric nor a space replaced by one.
_ASCII_WORDS = bytes(c if chr(c).isalnum() else 32 for c in bytes(range(128)).lower()) + bytes(range(128, 256))
_ASCII = bytes(range(128))


def words(text: str) -> list[str]:
  """Lower-case words with punctuation and whitespace normalised away."""
  if text.isascii():
    return text.encode("ascii").translate(_ASCII_WORDS).decode("ascii").split()
  data = text.lower().encode("utf-8", "surrogatepass").translate(_ASCII_WORDS)
  text = data.decode("utf-8", "surrogatepass")
  for c in set(data.translate(None, _ASCII).decode("utf-8", "surrogatepass")):  # (those beyond ASCII)
    if not c.isalnum() and not c.isspace():
      text = text.replace(c, " ")
  return text.split()


def windows(ws: list, n: int):
  """The n-grams of `ws` in order, as tuples (none when it has fewer than n words)."""
  return zip(*[ws[j:] for j in range(n)])


def ngrams(ws: list, n: int) -> set[tuple]:
  return set(windows(ws, n))


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


_STEP = 0x9E3779B97F4A7C15  # (odd: the polynomial's base, and splitmix64's increment)
_MIX = tuple(map(np.uint64, (_STEP, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 30, 27, 31)))
_STEP_6 = np.uint64(pow(_STEP, SHORT - 1, 1 << 64))


def mixed(ids: np.ndarray) -> np.ndarray:
  """uint64: each word id scrambled (splitmix64), for hashing windows of them."""
  step, m1, m2, s1, s2, s3 = _MIX
  x = ids.astype(np.uint64) + step
  x = (x ^ (x >> s1)) * m1
  x = (x ^ (x >> s2)) * m2
  return x ^ (x >> s3)


def window_hashes(x: np.ndarray, n: int) -> np.ndarray:
  """uint64 [max(0, len(x) - n + 1)]: a hash of each n-word window of mixed() ids, sum(x[i + j] *
  STEP ** (n - 1 - j)). Equal windows hash alike; unequal ones may too, so a hit is checked
  against the words."""
  count = max(0, len(x) - n + 1)
  h = x[:count]
  for j in range(1, n):
    h = h * _MIX[0] + x[j:j + count]
  return h


def _ranges(begins: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(which range, value) of every value of the ranges begins[i]:ends[i], in order."""
  sizes = ends - begins
  which = np.repeat(np.arange(len(sizes)), sizes)
  return which, np.arange(len(which)) + np.repeat(begins - (np.cumsum(sizes) - sizes), sizes)


@contextlib.contextmanager
def _gc_paused():
  """No cyclic garbage collection inside (building a million tuples would start it in vain)."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


class _Table:
  """Rows of n word ids sorted by hash, for looking windows up."""

  def __init__(self, rows: np.ndarray):
    hashes = window_hashes(mixed(rows.ravel()), rows.shape[1])[::rows.shape[1]]
    self.order = np.argsort(hashes, kind="stable")
    self.hashes, self.rows = hashes[self.order], rows[self.order]
    self.distinct = not (self.hashes[1:] == self.hashes[:-1]).any()

  def find(self, ids: np.ndarray, positions: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, row) for each window ids[positions[k]:+n] (hashed `hashes[k]`) equal to a row (rows
    numbered as given)."""
    lo = np.searchsorted(self.hashes, hashes)
    if self.distinct:  # (one row at most to check per window)
      last = len(self.hashes) - 1
      k = np.flatnonzero(self.hashes[np.minimum(lo, last)] == hashes) if last >= 0 else lo[:0]
      r = lo[k]
    else:
      k, r = _ranges(lo, np.searchsorted(self.hashes, hashes, "right"))
    same = (ids[positions[k, None] + np.arange(self.rows.shape[1])] == self.rows[r]).all(axis=1)
    return k[same], self.order[r[same]]


@dataclasses.dataclass(eq=False)
class Index:
  """Benchmark n-grams as rows of word ids (`vocab` numbers the items' words from 1): each 13-gram
  of `long` with its first item, each 7-gram of `short` with its items
  (short_items[short_starts[r]:short_starts[r + 1]]), each item's 7-gram count, and the
  allow-listed 13-grams."""
  items: list[str]
  vocab: dict[str, int]
  long: np.ndarray  # int32 [13-grams, LONG]
  long_item: np.ndarray  # int32 [13-grams]
  short: np.ndarray  # int32 [7-grams, SHORT]
  short_starts: np.ndarray  # int64 [7-grams + 1]
  short_items: np.ndarray  # int32
  short_counts: np.ndarray  # int64 [items]
  allowed: set[tuple]
  FORMAT = 2  # (what an index saved by another version is told by: data/decontam.py rebuilds it)

  def __post_init__(self):
    self._tables = None  # (long, short) _Tables, made when first needed

  def __getstate__(self):
    return {**self.__dict__, "_tables": None}

  @classmethod
  def build(cls, items: list[tuple[str, str]], allow: list[str], common_items: int) -> "Index":
    """The index of `items`; allow-listed and common 13-grams, and the 7-grams inside them, are
    left out (boilerplate counts neither as a match nor toward an overlap)."""
    with _gc_paused():  # (until the n-gram tuples are gone again)
      tokenized = [words(text) for _, text in items]
      return cls([i for i, _ in items], *_index_fields(tokenized, allow, common_items))

  def verdict(self, text: str, settings: Settings) -> dict | None:
    """None for a clean document, else {"verdict", "item", and "ngram" or "ratio"}."""
    return self.verdicts([text], settings)[0]

  def verdicts(self, texts: list[str], settings: Settings) -> list[dict | None]:
    """verdict() of each text, worked out together (numpy over all their words)."""
    if self._tables is None:
      self._tables = _Table(self.long), _Table(self.short)
    wss = [words(text) for text in texts]
    batch = _Batch(wss, self.vocab)
    out: list[dict | None] = [None] * len(texts)
    for d, (ratio, k) in self._overlaps(batch).items():
      for name, threshold in (("contaminated", settings.contaminated_ratio), ("partial", settings.partial_ratio)):
        if ratio >= threshold:
          out[d] = {"verdict": name, "item": self.items[k], "ratio": round(ratio, 4)}
          break
    docs, positions = batch.windows(LONG)
    hashes = batch.hashes[positions] * _STEP_6 + batch.heads[positions + SHORT]  # (13 words: 7, then 6)
    found, rows = self._tables[0].find(batch.ids, positions, hashes)
    first = np.unique(docs[found], return_index=True)[1]  # (found is in position order)
    for d, p, r in zip(docs[found][first].tolist(), positions[found][first].tolist(), rows[first].tolist()):
      at = p - int(batch.starts[d])
      out[d] = {"verdict": "contaminated", "item": self.items[self.long_item[r]],
                "ngram": " ".join(wss[d][at:at + LONG])}
    return out

  def _overlaps(self, batch: "_Batch") -> dict[int, tuple[float, int]]:
    """{document: (7-gram overlap ratio, item)} with the item it overlaps most (the last such item
    on a tie), for the documents sharing a 7-gram with an item."""
    docs, positions = batch.windows(SHORT)
    found, rows = self._tables[1].find(batch.ids, positions, batch.hashes[positions])
    if not len(found):
      return {}
    pairs = np.unique(docs[found] * len(self.short) + rows)  # each (document, 7-gram) once
    rows = pairs % len(self.short)
    which, at = _ranges(self.short_starts[rows], self.short_starts[rows + 1])
    keys, shared = np.unique(pairs[which] // len(self.short) * len(self.items) + self.short_items[at],
                             return_counts=True)
    docs, items = keys // len(self.items), keys % len(self.items)
    unique = batch.distinct(np.unique(docs))  # (the documents' 7-grams, counted where needed)
    ratios = shared / np.maximum(1, np.minimum(unique[docs], self.short_counts[items]))
    order = np.lexsort((items, ratios, docs))
    last = order[np.append(docs[order][1:] != docs[order][:-1], True)]
    return {d: (r, k) for d, r, k in zip(docs[last].tolist(), ratios[last].tolist(), items[last].tolist())}


class _Batch:
  """Documents' words as one array of ids (an item's word: its vocabulary number; any other: a
  number above those, the same for each of its occurrences in the batch) and their 7-word hashes."""

  def __init__(self, wss: list[list[str]], vocab: dict[str, int]):
    self.wss = wss
    flat = list(itertools.chain.from_iterable(wss))
    number = dict(zip(dict.fromkeys(flat), itertools.count(len(vocab) + 1)))
    number.update({w: vocab[w] for w in number.keys() & vocab.keys()})
    self.ids = np.fromiter(map(number.__getitem__, flat), np.int64, len(flat))
    self.lens = np.fromiter(map(len, wss), np.int64, len(wss))
    self.starts = np.cumsum(self.lens) - self.lens
    self.unknown = np.concatenate([[0], np.cumsum(self.ids > len(vocab))])  # words no item has, so far
    x = mixed(self.ids)
    self.heads = window_hashes(x, SHORT - 1)
    self.hashes = self.heads[:-1] * _MIX[0] + x[SHORT - 1:]  # each 7-word window's hash

  def windows(self, n: int, every: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(document, position) of each n-word window inside a document, in order; unless `every`,
    only those of words some item has (no other window can be in an item)."""
    docs, positions = _ranges(self.starts, self.starts + np.maximum(self.lens - n + 1, 0))
    if every:
      return docs, positions
    inside = self.unknown[positions + n] == self.unknown[positions]
    return docs[inside], positions[inside]

  def distinct(self, which: np.ndarray) -> np.ndarray:
    """int64 [documents]: how many distinct 7-grams each document of `which` has (others: 0)."""
    keep = np.zeros(len(self.wss), bool)
    keep[which] = True
    docs, positions = self.windows(SHORT, every=True)
    docs, positions = docs[keep[docs]], positions[keep[docs]]
    bits = max(1, (len(self.wss) - 1).bit_length())  # the document in the top bits, the hash below
    keys = (self.hashes[positions] >> np.uint64(bits)) | (docs.astype(np.uint64) << np.uint64(64 - bits))
    order = np.argsort(keys)
    docs, positions, keys = docs[order], positions[order], keys[order]
    tied = np.flatnonzero(keys[1:] == keys[:-1])
    span = np.arange(SHORT)
    same = (self.ids[positions[tied, None] + span] == self.ids[positions[tied + 1, None] + span]).all(axis=1)
    out = np.bincount(docs, minlength=len(self.wss)) - np.bincount(docs[tied[same]], minlength=len(self.wss))
    for d in set(docs[tied[~same]].tolist()):  # a hash shared by unequal windows: counted exactly
      out[d] = len(ngrams(self.wss[d], SHORT))
    return out


def _index_fields(tokenized: list[list[str]], allow: list[str], common_items: int) -> tuple:
  """Index.build's fields but `items`, from the items' words."""
  vocab = dict(zip(dict.fromkeys(itertools.chain.from_iterable(tokenized)), itertools.count(1)))
  ids = np.fromiter(map(vocab.__getitem__, itertools.chain.from_iterable(tokenized)), np.int32)
  lens = np.fromiter(map(len, tokenized), np.int64, len(tokenized))
  every = {n: [list(windows(ws, n)) for ws in tokenized] for n in (LONG, SHORT)}  # each item's, in order
  first = {LONG: {}, SHORT: {}}  # n-gram -> its first place in `ids` (so in its first item)
  for k, start in zip(reversed(range(len(tokenized))), reversed((np.cumsum(lens) - lens).tolist())):
    for n, places in first.items():
      places.update(zip(reversed(every[n][k]), range(start + len(every[n][k]) - 1, start - 1, -1)))
  counts = collections.Counter(itertools.chain.from_iterable(map(set, every[LONG])))  # items per 13-gram
  allowed = {tuple(words(line)) for line in allow if len(words(line)) == LONG}
  allowed |= {g for g, n in counts.items() if n >= common_items}
  long = np.fromiter((p for g, p in first[LONG].items() if g not in allowed), np.int64)
  boilerplate = set().union(*(ngrams(list(g), SHORT) for g in allowed))
  grams = [set(gs) - boilerplate for gs in every[SHORT]]
  short: dict[tuple, list[int]] = collections.defaultdict(list)
  for k, gs in enumerate(grams):
    for g in gs:
      short[g].append(k)
  shorts = np.fromiter(map(first[SHORT].__getitem__, short), np.int64, len(short))
  long_items = np.searchsorted(np.cumsum(lens), long, "right").astype(np.int32)
  short_starts = np.cumsum([0, *map(len, short.values())])
  short_items = np.fromiter(itertools.chain.from_iterable(short.values()), np.int32)
  return (vocab, ids[long[:, None] + np.arange(LONG)], long_items, ids[shorts[:, None] + np.arange(SHORT)],
          short_starts, short_items, np.fromiter(map(len, grams), np.int64, len(grams)), allowed)

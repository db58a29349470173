"""Exact and MinHash deduplication over one deterministic global order of documents (source order,
file order, index), as pure functions a driver can distribute: `signatures` per block (Ray Data's
map_batches), `first_holders` as a group-by on (band, key) taking the smallest index, `linked_pairs`
per pair, `components` once on the driver.

Text is normalised as decontamination normalises it (data/overlap.py's words: lower case, every run
of characters that is not a letter or digit one space).
  exact      documents with the same normalised text (`exact_key`: its 16-byte blake2b) are one
             cluster; it runs first, and only each exact cluster's first document goes on
  shingles   the normalised text's word `shingle_words`-grams (the whole text when it is shorter),
             each hashed once to 64 bits: a polynomial hash of its bytes mod 2^64 read off prefix sums
             over the whole batch (numpy; the value does not depend on the batch), then murmur3's
             64-bit finaliser
  signature  bands*rows minhashes: min over the shingles x of (a_k*x + b_k) mod 2^64 (a_k odd, a_k
             and b_k drawn from `seed`), its high 32 bits (multiply-shift: the high bits are the mixed
             ones). A text with no word has the all-ones signature and takes no part in fuzzy matching
  bands      band i's key is the signature's i-th slice of `rows` values; two documents with an equal
             key in some band are a candidate pair: for shingle Jaccard J, P = 1 - (1 - J^rows)^bands.
             Each document is paired with its key's first holder (the smallest index) per band, never
             with every holder: at most n*bands pairs (unverified, the same components as all pairs)
  verify     with min_similarity > 0 a candidate pair is linked only when that fraction of its
             bands*rows minhashes agree (an estimate of J, std sqrt(J(1-J)/(bands*rows)))
  clusters   connected components of the linked pairs and the exact clusters
Kept: the first document of each cluster in the given order; `dedup` returns, for each document, the
index of its cluster's kept document (its own index when kept).

Defaults: shingles of 3 words, 25 bands of 2 rows, min_similarity 0.15. The target is recall >= 0.95
of near-duplicate pairs up to 20% word edits with <= 1% false positives on `planted`'s set (clusters
of a 300-word base and copies at 0, 1, 3, 5 and 20% word edits among twice as many unrelated
documents, words from a Zipf vocabulary). A 20% edit rate
keeps about 0.8^n of the n-word shingles: Jaccard ~0.22 for 5-grams and ~0.39 for 3-grams (1-5%
edits: 0.65-0.91 and 0.78-0.95), so 3-grams at 25x2 make such a pair a candidate with probability
1-(1-0.39^2)^25 = 0.98 (threshold (1/25)^(1/2) = 0.2). datatrove's 5-grams at 14x8 (threshold
(1/14)^(1/8) = 0.72) find almost no 20% edit (P(0.22) = 8e-5) and few 5% ones (P(0.65) = 0.36): on
the planted set its pair recall is 0.46. The price of the low threshold is candidates among unrelated
documents (P(0.01) = 0.0025 per pair), and components chain them into false clusters: without
verification the planted set puts 20% of its joined pairs together falsely. Verification at 0.15
(8 of 50 minhashes; a 20%-edit pair agrees on ~19.5 +- 3.5) removes those links: planted recall
0.99, false positives 0. A document is verified against its key's first holder only, so a document
whose first holder is unrelated misses that band (the others still count).

Facts from datatrove 0.10.1 (pipeline/dedup/minhash.py): 5-gram word shingles of its simplified
text, 14 buckets of 8 hashes, 64-bit shingle hashes (xxhash by default, sha1 optional), a_k*x+b_k
mod 2^61-1 (the product wraps at 2^64 first), seed 1; a text of fewer than 5 words has no signature
(never a duplicate); its clusters keep a union-by-size root, not the first document.
"""

from __future__ import annotations

import hashlib

import numpy as np

from phi4_jax import fields
from phi4_jax.data import overlap

FIELDS = fields.Group(
    exact=fields.Field(True, fields.boolean(), "documents with the same normalised text are one cluster"),
    fuzzy=fields.Field(True, fields.boolean(), "MinHash near-duplicates (from band keys) are one cluster"),
    shingle_words=fields.Field(3, fields.integer(1), "words per shingle (the whole text when shorter)"),
    bands=fields.Field(25, fields.integer(1), "LSH bands: a candidate shares one band's key"),
    rows=fields.Field(2, fields.integer(1), "minhashes per band: P(candidate) = 1-(1-J^rows)^bands"),
    seed=fields.Field(1, fields.integer(0), "the minhash family's seed (the same on every worker)"),
    min_similarity=fields.Field(0.15, fields.number(0, 1),
                                "link a candidate pair only when this fraction of minhashes agree (0 = off)"),
)

_U64 = np.uint64
_BASE = 0x9E3779B97F4A7C15  # the polynomial shingle hash's base (odd: invertible mod 2^64)
_POWERS = {"up": np.ones(1, _U64), "down": np.ones(1, _U64)}  # _BASE^j and _BASE^-j mod 2^64
_TEXT_CHUNK = 1 << 22  # characters of normalised text hashed together
_ROW_CHUNK = 1 << 12  # shingles whose minhashes are computed together
EMPTY = np.uint32(0xFFFFFFFF)  # every minhash of a text with no word


def normalise(text: str) -> str:
  """The text's words (data/overlap.py's: lower case, letters and digits) joined by single spaces."""
  return " ".join(overlap.words(text))


def exact_key(text: str) -> bytes:
  """16-byte blake2b of the normalised text: equal keys are exact duplicates."""
  return hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
  """_BASE^j and _BASE^-j mod 2^64 for j < length (a table that grows by doubling)."""
  if len(_POWERS["up"]) < length:
    size = max(length, 2 * len(_POWERS["up"]))
    for name, base in (("up", _BASE), ("down", pow(_BASE, -1, 1 << 64))):
      steps = np.full(size, base, _U64)
      steps[0] = 1
      _POWERS[name] = np.cumprod(steps)  # uint64 products wrap: mod 2^64
  return _POWERS["up"][:length], _POWERS["down"][:length]


def _fmix64(x: np.ndarray) -> np.ndarray:
  """murmur3's 64-bit finaliser, in place."""
  x ^= x >> _U64(33)
  x *= _U64(0xFF51AFD7ED558CCD)
  x ^= x >> _U64(33)
  x *= _U64(0xC4CEB9FE1A85EC53)
  x ^= x >> _U64(33)
  return x


def _shingle_hashes(normalised: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
  """64-bit hashes of every text's word n-grams, concatenated, and each text's count of them."""
  data = np.frombuffer("\n".join(normalised).encode(), np.uint8)  # "\n" ends a text, " " a word
  seps = np.flatnonzero((data == 10) | (data == 32))
  starts, ends = np.r_[0, seps + 1], np.r_[seps, len(data)]  # the spans between separators
  text_of = np.r_[0, np.cumsum(data[seps] == 10)]
  word = ends > starts  # an empty text is an empty span
  starts, ends, text_of = starts[word], ends[word], text_of[word]
  word_counts = np.bincount(text_of, minlength=len(normalised))
  first_word = np.cumsum(word_counts) - word_counts
  counts = np.where(word_counts > 0, np.maximum(word_counts - n + 1, 1), 0)
  text_of_shingle = np.repeat(np.arange(len(normalised)), counts)
  head = first_word[text_of_shingle] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  tail = np.minimum(head + n - 1, first_word[text_of_shingle] + word_counts[text_of_shingle] - 1)
  up, down = _powers(len(data) + 1)
  prefix = np.zeros(len(data) + 1, _U64)
  np.cumsum(np.multiply(data, up[:len(data)], dtype=_U64), out=prefix[1:])
  lo, hi = starts[head], ends[tail]
  return _fmix64((prefix[hi] - prefix[lo]) * down[lo]), counts


def family(settings) -> tuple[np.ndarray, np.ndarray]:
  """The bands*rows (a odd, b) pairs of the minhash family drawn from settings.seed."""
  rng = np.random.default_rng(settings.seed)
  k = settings.bands * settings.rows
  a = rng.integers(0, 1 << 63, size=k, dtype=_U64) * _U64(2) + _U64(1)
  return a, rng.integers(0, 1 << 64, size=k, dtype=_U64, endpoint=False)


def _minhashes(hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(texts, k) uint32: per text, the high half of min over its shingles of a*x+b mod 2^64."""
  out = np.full((len(counts), len(a)), EMPTY, np.uint32)
  text_of = np.repeat(np.arange(len(counts)), counts)
  offsets = np.cumsum(counts) - counts
  buffer = np.empty((len(a), min(_ROW_CHUNK, len(hashes))), _U64)  # (k, shingles): reduceat runs along rows
  for lo in range(0, len(hashes), _ROW_CHUNK):
    hi = min(lo + _ROW_CHUNK, len(hashes))
    texts = np.unique(text_of[lo:hi])  # a text longer than a chunk is minimised across chunks
    values = np.multiply(a[:, None], hashes[None, lo:hi], out=buffer[:, :hi - lo])
    values += b[:, None]
    mins = np.minimum.reduceat(values, np.maximum(offsets[texts], lo) - lo, axis=1)
    out[texts] = np.minimum(out[texts], (mins.T >> _U64(32)).astype(np.uint32))
  return out


def _signatures_of_normalised(normalised: list[str], settings) -> np.ndarray:
  """Signatures of normalised texts, hashed in groups of about _TEXT_CHUNK characters."""
  a, b = family(settings)
  out = [np.zeros((0, len(a)), np.uint32)]
  lo = 0
  while lo < len(normalised):
    hi, size = lo + 1, len(normalised[lo])
    while hi < len(normalised) and size + len(normalised[hi]) < _TEXT_CHUNK:
      size += len(normalised[hi]) + 1
      hi += 1
    out.append(_minhashes(*_shingle_hashes(normalised[lo:hi], settings.shingle_words), a, b))
    lo = hi
  return np.concatenate(out)


def signatures(texts: list[str], settings) -> np.ndarray:
  """(len(texts), bands*rows) uint32 minhash signatures; each row depends on its text alone."""
  return _signatures_of_normalised([normalise(t) for t in texts], settings)


def signature(text: str, settings) -> np.ndarray:
  """One text's bands*rows uint32 minhashes (all EMPTY when it has no word)."""
  return signatures([text], settings)[0]


def band_keys(sig: np.ndarray, settings) -> list[bytes]:
  """One signature's band keys: band i's `rows` minhashes as little-endian bytes."""
  rows = np.ascontiguousarray(sig, dtype="<u4").reshape(settings.bands, settings.rows)
  return [row.tobytes() for row in rows]


def first_holders(sigs: np.ndarray, settings) -> np.ndarray:
  """(n, bands): for each signature and band, the smallest index with the same band key."""
  n = len(sigs)
  out = np.zeros((n, settings.bands), np.int64)
  keys = np.ascontiguousarray(sigs.reshape(n, settings.bands, settings.rows).transpose(1, 0, 2))
  for band in range(settings.bands):
    view = keys[band].view(np.dtype((np.void, 4 * settings.rows))).ravel()
    _, first, inverse = np.unique(view, return_index=True, return_inverse=True)  # first: stable
    out[:, band] = first[inverse.ravel()]
  return out


def linked_pairs(sigs: np.ndarray, holders: np.ndarray, settings) -> np.ndarray:
  """(m, 2) distinct (first holder, index) candidate pairs, those under min_similarity dropped."""
  index = np.broadcast_to(np.arange(len(sigs))[:, None], holders.shape)
  mask = holders != index
  pairs = np.unique(np.stack([holders[mask], index[mask]], axis=1), axis=0).reshape(-1, 2)
  if settings.min_similarity > 0 and len(pairs):
    agree = (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)
    pairs = pairs[agree >= settings.min_similarity]
  return pairs


def components(n: int, pairs) -> np.ndarray:
  """Each node's component root, the smallest index in its component (union-find done as numpy:
  every root hooked to the smallest root it meets, then pointer jumping, until no edge is split)."""
  parent = np.arange(n)
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  u, v = pairs[:, 0], pairs[:, 1]
  while True:
    ru, rv = parent[u], parent[v]
    split = ru != rv
    if not split.any():
      return parent
    low, high = np.minimum(ru, rv)[split], np.maximum(ru, rv)[split]
    np.minimum.at(parent, high, low)
    while True:
      jumped = parent[parent]
      if np.array_equal(jumped, parent):
        break
      parent = jumped


def clusters(exact: np.ndarray, sigs: np.ndarray, settings) -> tuple[np.ndarray, list]:
  """For documents in the global order (their exact_key bytes and their signatures, EMPTY for a
  text with no word): each one's kept document, its cluster's first (its own index when kept), and
  why it is not kept ("exact", "fuzzy", or None). Exact duplicates first, then MinHash candidates
  among each exact cluster's first documents, then connected components."""
  n = len(exact)
  kept = np.arange(n)
  if settings.exact and n:
    _, first, inverse = np.unique(np.asarray(exact, "S16"), return_index=True, return_inverse=True)
    kept = first[inverse.reshape(-1)]
  reasons = ["exact" if k != i else None for i, k in enumerate(kept.tolist())]
  if settings.fuzzy and n:
    live = np.flatnonzero((kept == np.arange(n)) & (sigs != EMPTY).any(axis=1))
    pairs = linked_pairs(sigs[live], first_holders(sigs[live], settings), settings)
    root = np.arange(n)
    root[live] = live[components(len(live), pairs)]
    moved = root[kept]
    reasons = [r or ("fuzzy" if m != i else None) for i, (r, m) in enumerate(zip(reasons, moved.tolist()))]
    kept = moved
  return kept, reasons


def dedup(docs: list[tuple[str, str]], settings=None) -> list[int]:
  """For each (doc_id, text), in the given global order, the index of the document kept for its
  cluster (clusters): the cluster's first document (its own index when kept)."""
  settings = FIELDS.config() if settings is None else settings
  FIELDS.check(settings, "dedup", complete=True)
  normalised = [normalise(text) for _, text in docs]
  exact = np.array([hashlib.blake2b(t.encode(), digest_size=16).digest() for t in normalised], "S16")
  sigs = _signatures_of_normalised(normalised, settings) if settings.fuzzy else np.zeros((len(docs), 0), np.uint32)
  return clusters(exact, sigs, settings)[0].tolist()


def pair_metrics(kept_for, truth) -> dict[str, float]:
  """Pair-counting quality of a clustering against true cluster ids. A true pair is two documents
  with the same truth id; a joined pair is two with the same kept_for. recall = true pairs that are
  joined / true pairs (1.0 when there are none); false_positive_rate = joined pairs that are not
  true / joined pairs (0.0 when none are joined). Also the counts."""
  kept_for, truth = np.asarray(kept_for), np.asarray(truth)

  def pairs(*labels):
    _, sizes = np.unique(np.stack(labels, axis=1), axis=0, return_counts=True)
    return int((sizes * (sizes - 1) // 2).sum())

  true, joined, both = pairs(truth), pairs(kept_for), pairs(kept_for, truth)
  return {"recall": both / true if true else 1.0,
          "false_positive_rate": (joined - both) / joined if joined else 0.0,
          "true_pairs": true, "joined_pairs": joined, "false_pairs": joined - both}


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  words: dict[str, None] = {}
  while len(words) < size:
    words.setdefault("".join(rng.choice(letters, size=int(rng.integers(2, 10)))))
  return list(words)


def edited(words: list[str], rate: float, rng: np.random.Generator, draw) -> list[str]:
  """`words` with round(rate * len(words)) edits at distinct positions, each a substitution, an
  insertion before the word or a deletion (equally likely); draw(k) gives k new words."""
  k = round(rate * len(words))
  ops = dict(zip(rng.choice(len(words), size=k, replace=False).tolist(), rng.integers(0, 3, size=k).tolist()))
  new = iter(draw(k))
  out = []
  for i, word in enumerate(words):
    op = ops.get(i)
    if op == 1:
      out.append(next(new))
    if op is None or op == 1:
      out.append(word)
    elif op == 0:
      out.append(next(new))
  return out


def planted(n_clusters: int, rng: np.random.Generator, *, words: int = 300, singletons: int | None = None,
            rates=(0.0, 0.01, 0.03, 0.05, 0.2), vocabulary: int = 5000, zipf: float = 1.0):
  """A planted set: n_clusters clusters of a base document (`words` words drawn from a Zipf(zipf)
  vocabulary of made-up words) and one copy per edit rate of `rates` (rate 0: the same words with
  other case, punctuation and spacing), plus `singletons` unrelated documents (default
  2 * n_clusters), shuffled. Returns the (doc_id, text) list and each document's true cluster id."""
  vocab = np.array(_vocabulary(rng, vocabulary))
  p = 1.0 / np.arange(1, vocabulary + 1) ** zipf
  p /= p.sum()

  def draw(k):
    return vocab[rng.choice(vocabulary, size=k, p=p)].tolist()

  texts, truth = [], []
  for c in range(n_clusters):
    base = draw(words)
    texts.append(" ".join(base))
    for rate in rates:
      copy = edited(base, rate, rng, draw)
      texts.append(_restyled(copy, rng) if rate == 0 else " ".join(copy))
    truth += [c] * (1 + len(rates))
  extra = 2 * n_clusters if singletons is None else singletons
  texts += [" ".join(draw(words)) for _ in range(extra)]
  truth += list(range(n_clusters, n_clusters + extra))
  order = rng.permutation(len(texts))
  return [(f"doc{i}", texts[j]) for i, j in enumerate(order)], [truth[j] for j in order]


def _restyled(words: list[str], rng: np.random.Generator) -> str:
  """The words with capitals, punctuation and doubled spaces that normalisation removes."""
  marks = rng.choice(np.array([" ", "  ", ", ", ". ", "; ", "\n"]), size=len(words))
  return "".join(w.capitalize() + m if i % 7 == 0 else w + m for i, (w, m) in enumerate(zip(words, marks)))

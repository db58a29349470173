"""Topics, and the per-topic keep rates that restore topics a quality filter starves.

A topic classifier is a classifier.py model trained with label="topic" on annotations that carry one
(the annotator writes `rule_topic`'s keyword verdict beside every annotation). A quality threshold
keeps k_t of the n_t documents of topic t; `keep_rates` gives each topic the probability that one of
its documents under the threshold is kept anyway, so that each topic named in `target_share` makes up
at least that share of what is kept (all of its documents, if it has too few):

  c_t(M) = clip(s_t * M, k_t, n_t)   a topic with a target share s_t (sum of the s_t < 1)
  c_t(M) = k_t                       any other topic
  M = sum_t c_t(M)                   the total kept: one solution, since the right side grows
                                     with M at a slope of at most sum s_t < 1 (solved exactly:
                                     c_t is linear between the points k_t / s_t and n_t / s_t)
  rate_t = (c_t(M) - k_t) / (n_t - k_t)   (0 when c_t(M) = k_t)

Documents above the threshold are always kept. `kept` draws a document's keep from a hash of its id
(and a seed), so the choice is the same in every process and rerun, whatever the batch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import numpy as np

# Keyword lists of the rule topic judge: a document's topic is the list with the most hits (words
# of the document in the list, counted with repeats), when it has >= MIN_HITS hits and more than
# the other list; otherwise "other".
STEM = frozenset("""
algebra algorithm atom atoms biology calculus cell cells chemical chemistry circuit code computer
computing data derivative electron energy engineering equation equations experiment force formula
function functions gene genes geometry graph integral laboratory mass mathematics math matrix
molecule molecules number numbers physics probability proof protein quantum science scientific
software statistics technology theorem variable variables vector velocity
""".split())
HUMANITIES = frozenset("""
ancient art artist artists author century culture cultural dynasty emperor empire essay ethics
history historical king kingdom language languages law literature medieval moral music myth
novel painting philosopher philosophy poem poems poet poetry political politics queen religion
religious revolution society story war wars
""".split())
TOPICS = ("humanities", "other", "stem")
MIN_HITS = 2
_WORD = re.compile(r"[a-z]+")


def rule_topic(text: str) -> str:
  """"stem", "humanities" or "other" by the keyword lists STEM and HUMANITIES (see above)."""
  words = _WORD.findall(text.lower())
  stem, humanities = sum(w in STEM for w in words), sum(w in HUMANITIES for w in words)
  if max(stem, humanities) < MIN_HITS or stem == humanities:
    return "other"
  return "stem" if stem > humanities else "humanities"


def counts(topics, passed) -> dict[str, tuple[int, int]]:
  """{topic: (documents, documents that passed the quality filter)} of parallel sequences."""
  out: dict[str, list[int]] = {}
  for topic, ok in zip(topics, passed):
    c = out.setdefault(topic, [0, 0])
    c[0] += 1
    c[1] += bool(ok)
  return {t: (n, k) for t, (n, k) in sorted(out.items())}


def keep_rates(quality_keep_by_topic: Mapping[str, tuple[int, int]], target_share: Mapping[str, float]
               ) -> dict[str, float]:
  """{topic: probability that a document under the quality threshold is kept} from {topic: (n_t, k_t)}
  and {topic: s_t} (the module docstring's formula); a topic not in target_share gets 0."""
  unknown = sorted(set(target_share) - set(quality_keep_by_topic))
  if unknown:
    raise ValueError(f"target_share: no documents of topic {unknown[0]!r}")
  if any(not 0 <= s < 1 for s in target_share.values()) or sum(target_share.values()) >= 1:
    raise ValueError(f"target_share: each share in [0, 1) and their sum under 1, got {dict(target_share)}")
  n = {t: v[0] for t, v in quality_keep_by_topic.items()}
  k = {t: v[1] for t, v in quality_keep_by_topic.items()}
  bad = [t for t in n if not 0 <= k[t] <= n[t]]
  if bad:
    raise ValueError(f"quality_keep_by_topic[{bad[0]!r}]: (documents, kept) with 0 <= kept <= documents, "
                     f"got {quality_keep_by_topic[bad[0]]}")

  def kept_count(total: float) -> dict[str, float]:
    return {t: min(max(target_share[t] * total, k[t]), n[t]) if t in target_share else k[t] for t in n}

  low, high = sum(k.values()), sum(n.values())
  points = sorted({low, high} | {p for t, s in target_share.items() if s > 0 for p in (k[t] / s, n[t] / s)
                                 if low < p < high})
  excess = [sum(kept_count(p).values()) - p for p in points]  # decreasing: >= 0 at low, <= 0 at high
  j = next(j for j in range(len(points)) if excess[j] <= 0)
  total = points[j] if j == 0 or excess[j] == 0 else (
      points[j - 1] + excess[j - 1] * (points[j] - points[j - 1]) / (excess[j - 1] - excess[j]))
  return {t: (c - k[t]) / (n[t] - k[t]) if c > k[t] else 0.0 for t, c in kept_count(total).items()}


def draw(doc_id: str, seed: int = 0) -> float:
  """A document's uniform draw in [0, 1): a hash of (seed, its id)."""
  digest = hashlib.blake2b(f"{seed}\0{doc_id}".encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0 ** 64


def kept(ids, topics, passed, rates: Mapping[str, float], seed: int = 0) -> np.ndarray:
  """Which documents are kept: those that passed, and those that did not with probability
  rates[topic] (draw(id, seed) < rate)."""
  return np.array([bool(ok) or draw(i, seed) < rates.get(t, 0.0) for i, t, ok in zip(ids, topics, passed)],
                  dtype=bool)

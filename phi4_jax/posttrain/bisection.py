"""Pivotal Token Search's bisection (the paper's Figure 4) on token ids: pure, no model.

A pivotal token moves p(success | question + prefix) by at least p_gap. `subdivide` finds them in
a solution by bisection: a span whose two ends differ by p_gap or more is cut at the cumulative
midpoint of its tokens' surprisal (-log p) and each half searched again; a span of one token whose
ends differ is pivotal. Each cut needs one new estimate, so a pivot costs about log2(length)
estimates instead of one per token. `bisect` is the same search as a generator, so that pts.py can
run many questions' searches in lockstep and batch their rollouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Sequence

import numpy as np

from phi4_jax.posttrain.rollouts import PrefixStats

Search = Generator[list[int], dict[int, float], list[tuple[int, float, float]]]


@dataclasses.dataclass(frozen=True)
class Pivot:
  position: int  # index of the token in the solution (its prefix is solution[:position])
  token_id: int
  p_before: float  # p(success | prefix)
  p_after: float  # p(success | prefix + token)


def split_point(token_logprobs: Sequence[float]) -> int:
  """Where Split cuts a span of >= 2 tokens: the first cut (1 .. len-1) whose left part holds at
  least half of the span's total surprisal; the middle when the span has none."""
  surprisal = np.maximum(-np.asarray(token_logprobs, np.float64), 0.0)
  total = surprisal.sum()
  if not total > 0:
    return len(surprisal) // 2
  cut = int(np.searchsorted(np.cumsum(surprisal), total / 2)) + 1
  return min(max(cut, 1), len(surprisal) - 1)


def _moves(p_before: float, p_after: float, p_gap: float) -> bool:
  """|p_after - p_before| >= p_gap, up to float rounding (3/10 - 1/10 is 0.1999...)."""
  return abs(p_after - p_before) >= p_gap - 1e-9


def bisect(length: int, token_logprobs: Sequence[float], p_gap: float) -> Search:
  """Figure 4's Subdivide as a generator: yields the prefix lengths whose p(success) it needs and
  is sent {length: p}; returns [(position, p_before, p_after)] of the pivotal tokens in order.
  The spans of one level are cut together, so all their new estimates are asked at once."""
  p = yield [0, length]
  p = dict(p)
  spans, final = [(0, length)], []
  while spans:
    cuts = []
    for lo, hi in spans:
      if hi - lo <= 1 or not _moves(p[lo], p[hi], p_gap):
        final.append((lo, hi))
      else:
        cuts.append((lo, lo + split_point(token_logprobs[lo:hi]), hi))
    needed = sorted({mid for _, mid, _ in cuts} - p.keys())
    if needed:
      p.update((yield needed))
    spans = [span for lo, mid, hi in cuts for span in ((lo, mid), (mid, hi))]
  return [(lo, p[lo], p[hi]) for lo, hi in sorted(final) if hi - lo == 1 and _moves(p[lo], p[hi], p_gap)]


def subdivide(solution_ids: Sequence[int], p_success: Callable[[tuple], float],
              token_logprobs: Sequence[float], *, p_gap: float = 0.2) -> list[Pivot]:
  """The pivotal tokens of a solution, in order. `p_success(prefix_ids)` is called at most once
  per prefix (memoized); token_logprobs[i] is log p(solution[i] | question + solution[:i])."""
  if len(token_logprobs) != len(solution_ids):
    raise ValueError(f"token_logprobs: {len(token_logprobs)} values for {len(solution_ids)} tokens")
  memo: dict[int, float] = {}
  search = bisect(len(solution_ids), token_logprobs, p_gap)
  try:
    need = next(search)
    while True:
      for k in need:
        if k not in memo:
          memo[k] = float(p_success(tuple(solution_ids[:k])))
      need = search.send({k: memo[k] for k in need})
  except StopIteration as done:
    return [Pivot(k, int(solution_ids[k]), before, after) for k, before, after in done.value]


def pivot_pair(pivot: Pivot, at_prefix: PrefixStats) -> tuple[int, int] | None:
  """(chosen, rejected) token ids for a pivot, from the first tokens of the rollouts sampled at its
  prefix: the alternative is the most frequent other first token whose success rate lies on the
  other side of p_before (ties: the smaller id). None when no rollout offers one."""
  raises = pivot.p_after > pivot.p_before
  other_way = [(count, -token) for token, (count, wins) in at_prefix.first.items()
               if token != pivot.token_id and ((wins / count < pivot.p_before) if raises
                                               else (wins / count > pivot.p_before))]
  if not other_way:
    return None
  alternative = -max(other_way)[1]
  return (pivot.token_id, alternative) if raises else (alternative, pivot.token_id)

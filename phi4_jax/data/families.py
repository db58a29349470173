"""The embedded question families and their named splits: which generated items are held out for
evaluation, and which are trained on or searched.

  exercises  synthetic.exercise, textbook exercises with worked solutions
             eval         held out: answers' embedded:exercises (256 items)
             choice       held out: choice's embedded:exercises (256 items, as multiple choice)
             pretrain     corpus:synthetic (pretraining)
             sft          corpus:sft_math
             dpo          corpus:dpo_pairs
             dpo_heldout  corpus:dpo_pairs_heldout (DPO's held-out rewards; the splits above and
                          search skip its questions too)
             search       PTS and judge questions: corpus:exercises, half of corpus:mixed
  parity     synthetic.parity_question, "Are there more odd or even numbers in this list: 3 8 5 1 6?"
             eval         held out: embedded:parity (256 items)
             sft          corpus:sft_parity
             search       corpus:parity, the other half of corpus:mixed
  parity_short  the same with lists of 1 or 3 digits
             sft          corpus:sft_parity's easy quarter

Each split draws from its own seed. A held-out split's item i is the generator's draw at index
start + i. Any other split's item i is the generator's first attempt at index i (attempt 0 is the
plain draw; attempt k > 0 redraws the numbers, keeping the topic, so topic shares stay the
generator's) that is clean of every held-out item:
  1. its question, normalised as decontam normalises text (overlap.words), is no held-out item's
     question, nor (exercises) a dpo_heldout item's, and
  2. none of the documents it can become in training data (exercises: the pretraining text, the
     question with its worked solution as SFT and DPO show it, the question with its answer as a
     PTS/judge question; parity: the SFT conversation and the question record) is `contaminated`
     by decontam's own verdict (overlap.Index, default Settings) against the benchmark items of
     every embedded set (`benchmark_items`, what `--benchmarks=embedded:exercises,embedded:parity`
     indexes).
Rule 1 alone is not enough: template exercises share 13-grams with held-out items that hold a
single number ("... the area of a triangle is half of base times height 48"), which decontam
counts as contamination. Rule 2 is that verdict itself, so decontam with the embedded sets as
benchmarks finds no contaminated document in any split trained on or searched (records that join
several texts, a tutor turn, two exercises in a row or a DPO pair's rejected reply, are checked as
built by tests/test_families.py). Partial overlap remains: a parity question whose list shares
a run of digits and its answer with a held-out one (23 of the colab PTS stage's 64 questions).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable

from phi4_jax.data import overlap, synthetic

HELD_OUT_SIZE = 256  # items of each held-out split
QUESTIONS = ("corpus:parity", "corpus:exercises", "corpus:mixed")  # the search splits as PTS/judge questions
MAX_ATTEMPTS = 1000  # redraws of one item before giving up (a split that cannot be kept clean)


@dataclasses.dataclass(frozen=True)
class Split:
  seed: int  # the generator's seed
  held_out: bool = False  # an evaluation set: drawn as is; every other split is kept clear of it
  start: int = 0  # the generator index of item 0
  avoid: tuple[str, ...] = ()  # other splits (of HELD_OUT_SIZE items) whose questions it skips


@dataclasses.dataclass(frozen=True)
class Family:
  make: Callable[[int, int, int], dict]  # (index, seed, attempt) -> item with a "question"
  documents: Callable[[dict], list[str]]  # an item -> the texts it can appear as in training data
  splits: dict[str, Split]


def _exercise_documents(ex: dict) -> list[str]:
  question = ex["question"]
  return [ex["text"], f"{question}\n{synthetic.worked_solution(ex)}", f"{question}\n{ex['answer']}"]


def _parity_documents(q: dict) -> list[str]:
  return [f"{q['question']}\n{q['solution']}", overlap.item_text(q)]


_DPO_HELDOUT = ("dpo_heldout",)  # scores DPO on pairs no stage trains on: its questions are skipped too
FAMILIES = {
    "exercises": Family(synthetic.exercise, _exercise_documents, {
        "eval": Split(6, held_out=True), "choice": Split(6, held_out=True, start=100_000),
        "pretrain": Split(0, avoid=_DPO_HELDOUT), "sft": Split(1, avoid=_DPO_HELDOUT),
        "dpo": Split(2, avoid=_DPO_HELDOUT), "dpo_heldout": Split(3),
        "search": Split(8, avoid=_DPO_HELDOUT)}),
    "parity": Family(synthetic.parity_question, _parity_documents, {
        "eval": Split(7, held_out=True), "sft": Split(4), "search": Split(5)}),
    # Lists of 1 or 3 digits: their answer is one digit's parity, or nearly, so SFT learns the feature
    # the long lists pool (no evaluation or search reads them).
    "parity_short": Family(functools.partial(synthetic.parity_question, lengths=synthetic.PARITY_SHORT_LENGTHS),
                           _parity_documents, {"sft": Split(6)}),
}
# decontam's embedded benchmarks: name -> (family, its held-out splits an evaluation reads by that name)
BENCHMARKS = {"embedded:exercises": ("exercises", ("eval", "choice")),
              "embedded:parity": ("parity", ("eval",))}


def item(family: str, split: str, index: int) -> dict:
  """Item `index` of a family's split (held-out splits have HELD_OUT_SIZE items)."""
  return items_at(family, split, [index])[0]


def items(family: str, split: str, count: int) -> list[dict]:
  """The first `count` items of a family's split."""
  return items_at(family, split, range(count))


def items_at(family: str, split: str, indices) -> list[dict]:
  """Items `indices` of a family's split, each the first clean attempt at its index (the attempts of
  all the indices still drawing are checked together: one decontam call per round)."""
  f = FAMILIES[family]
  s = f.splits[split]
  indices = list(indices)
  if s.held_out:
    for index in indices:
      if not 0 <= index < HELD_OUT_SIZE:
        raise ValueError(f"{family}/{split}: a held-out split has {HELD_OUT_SIZE} items, not item {index}")
    return [f.make(s.start + index, s.seed, 0) for index in indices]
  found, drawing = {}, sorted(set(indices))
  for attempt in range(MAX_ATTEMPTS):
    candidates = [f.make(s.start + index, s.seed, attempt) for index in drawing]
    verdicts = clean_all(family, candidates, s.avoid)
    found.update((index, c) for index, c, ok in zip(drawing, candidates, verdicts) if ok)
    drawing = [index for index, ok in zip(drawing, verdicts) if not ok]
    if not drawing:
      return [found[index] for index in indices]
  raise RuntimeError(f"{family}/{split}: item {drawing[0]} collides with a held-out item in {MAX_ATTEMPTS} draws")


def questions(spec: str, count: int) -> list[dict]:
  """The first `count` questions of an embedded question family (QUESTIONS): corpus:parity (the
  parity search split's records), corpus:exercises (the exercises search split's, as {"id",
  "question", "answer"}) or corpus:mixed (the two alternating, parity first)."""
  if spec not in ("corpus:parity", "corpus:exercises", "corpus:mixed"):
    raise KeyError(spec)
  parities = items("parity", "search", {"corpus:parity": count, "corpus:mixed": (count + 1) // 2}.get(spec, 0))
  exercises = [{"id": f"exercise-{i:06d}", "question": ex["question"], "answer": ex["answer"]}
               for i, ex in enumerate(items("exercises", "search", {"corpus:exercises": count,
                                                                    "corpus:mixed": count // 2}.get(spec, 0)))]
  if spec != "corpus:mixed":
    return parities or exercises
  return [(parities, exercises)[i % 2][i // 2] for i in range(count)]


def choice_item(index: int) -> dict:
  """Item `index` of the choice split as multiple choice ({"question", "choices", "answer"})."""
  return synthetic.multiple_choice(item("exercises", "choice", index), random.Random(f"choice-{index}"))


def benchmark_items(name: str) -> list[tuple[str, str]]:
  """(item id, text) of the embedded set `name` as decontam indexes it: every held-out item an
  evaluation reads under that name."""
  if name not in BENCHMARKS:
    raise ValueError(f"unknown embedded set {name!r} (known: {', '.join(BENCHMARKS)})")
  family, splits = BENCHMARKS[name]
  out = []
  for split in splits:
    records = ([choice_item(i) for i in range(HELD_OUT_SIZE)] if split == "choice"
               else items(family, split, HELD_OUT_SIZE))
    prefix = f"{name}/{'choice-' if split == 'choice' else ''}"
    out += [(f"{prefix}{i}", overlap.item_text(r)) for i, r in enumerate(records)]
  return out


def normalised(text: str) -> str:
  return " ".join(overlap.words(text))


@functools.cache
def _questions(family: str, splits: tuple[str, ...]) -> frozenset[str]:
  return frozenset(normalised(item(family, s, i)["question"]) for s in splits for i in range(HELD_OUT_SIZE))


@functools.cache
def _index() -> overlap.Index:
  every = [i for name in BENCHMARKS for i in benchmark_items(name)]
  return overlap.Index.build(every, [], overlap.Settings().common_items)


def clean(family: str, candidate: dict, avoid: tuple[str, ...] = ()) -> bool:
  """True when `candidate` may join a split trained on or searched (rules 1 and 2 above)."""
  return clean_all(family, [candidate], avoid)[0]


def clean_all(family: str, candidates: list[dict], avoid: tuple[str, ...] = ()) -> list[bool]:
  """clean() of each candidate, their documents checked in one decontam call."""
  held_out = tuple(n for n, s in FAMILIES[family].splits.items() if s.held_out)
  questions = [normalised(c["question"]) for c in candidates]
  ok = [not (q in _questions(family, held_out) or (avoid and q in _questions(family, avoid))) for q in questions]
  owners, texts = [], []
  for i, candidate in enumerate(candidates):
    if ok[i]:
      docs = FAMILIES[family].documents(candidate)
      owners += [i] * len(docs)
      texts += docs
  for i, found in zip(owners, _index().verdicts(texts, overlap.Settings()) if texts else []):
    if found is not None and found["verdict"] == "contaminated":
      ok[i] = False
  return ok

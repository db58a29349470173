"""Pivotal Token Search over a question file with our sampler: DPO pairs of single tokens.

For each question, num_rollouts rollouts of the bare question measure p(success); questions with
p_min <= p <= p_max are searched: the first of those rollouts is the solution, bisection.py finds
its pivotal tokens, and every p(success | question + prefix) it asks for comes from num_rollouts
continuations, batched across prefixes and questions (questions_per_round at a time), each checked
by its oracle. A pivot with an alternative first token gives one pair (bisection.pivot_pair):

  {"prompt_ids", "chosen_ids", "rejected_ids", "p_before", "p_after", "question_id", "position"}

the DPO stage's token-id format. A log (OUT.log.jsonl, one line per question, written as each
round of questions finishes) makes a killed run resumable with the same pairs; OUT is rewritten
from it at the end. With several processes, each searches every process_count-th question into
its own log, and whichever finishes last merges them into OUT.

  python -m phi4_jax.posttrain.pts --workdir=MODEL --questions=Q.jsonl --out=PAIRS.jsonl
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import time

import ml_collections

from phi4_jax import fields, flags
from phi4_jax.posttrain import rollouts
from phi4_jax.store import fingerprint, jsonl_log
from phi4_jax.posttrain.questions import read_questions
from phi4_jax.posttrain.bisection import Pivot, bisect, pivot_pair, split_point, subdivide
from phi4_jax.posttrain.rollouts import PrefixStats, Roller

__all__ = ["Pivot", "merge", "pts_fields", "read_questions", "run", "search", "split_point", "subdivide"]


FIELDS = fields.Group(
    rollouts.SAMPLING,
    p_gap=fields.Field(0.2, fields.number(0, 1, low_open=True),
                       "a token is pivotal when it moves p(success) by at least this"),
    p_min=fields.Field(0.2, fields.number(0, 1), "questions are searched when p_min <= p(success) <= p_max"),
    p_max=fields.Field(0.8, fields.number(0, 1), "the upper end of the p(success) searched (see p_min)"),
    questions_per_round=fields.Field(8, fields.integer(1),
                                     "questions searched together (their rollouts batched)"),
    balance=fields.Field(True, fields.boolean(),
                         "keep as many pairs preferring token A to B as B to A, wherever both occur "
                         "(pts.balance)"),
)
RULES = FIELDS.rules
BATCHING = ("max_batch", "questions_per_round")  # settings a question's pairs do not depend on


def pts_fields() -> ml_collections.ConfigDict:
  return FIELDS.config()


def check_settings(settings: ml_collections.ConfigDict, prefix: str = "pts") -> None:
  FIELDS.check(settings, prefix)
  if settings.p_min > settings.p_max:
    raise ValueError(f"{prefix}.p_min: must be <= {prefix}.p_max, got {settings.p_min} > {settings.p_max}")


@dataclasses.dataclass
class _Question:
  record: dict
  solution: list[int]
  search: object  # the bisection generator
  need: list[int]
  p: dict[int, float]
  stats: dict[int, PrefixStats]


def _start(roller: Roller, records: list[dict], settings) -> tuple[list[dict], dict[int, _Question]]:
  """Round 0: p(success) of each bare question; the searched ones get a solution and a search."""
  stats, groups = roller.estimate([(r, ()) for r in records])
  results = [{"question_id": r["id"], "p_success": st.p, "searched": False, "solution_ids": [],
              "pivots": [], "pairs": []} for r, st in zip(records, stats)]
  picked = [i for i, st in enumerate(stats)
            if settings.p_min <= st.p <= settings.p_max and rollouts.content(groups[i][0])]
  solutions = {i: rollouts.content(groups[i][0]) for i in picked}
  lps = roller.logprobs([rollouts.question_prompt(records[i]) for i in picked], [solutions[i] for i in picked])
  full = rollouts.check_all([(records[i], rollouts.TOKENIZER.decode(solutions[i])) for i in picked])
  active = {}
  for i, lp, ok in zip(picked, lps, full):
    results[i].update(searched=True, solution_ids=solutions[i])
    search = bisect(len(solutions[i]), lp, settings.p_gap)
    active[i] = _Question(records[i], solutions[i], search, next(search),
                          {0: stats[i].p, len(solutions[i]): float(ok)}, {0: stats[i]})
  return results, active


def search(roller: Roller, records: list[dict], settings: ml_collections.ConfigDict) -> list[dict]:
  """One result per question: {"question_id", "p_success", "searched", "solution_ids", "pivots",
  "pairs"}. A question's rollouts are a function of settings.seed, its id and its prefixes, so its
  result does not depend on the questions searched with it."""
  results, active = _start(roller, records, settings)
  while active:
    wanted = [(i, k) for i, q in active.items() for k in q.need if k not in q.p]
    if wanted:
      stats, _ = roller.estimate([(active[i].record, tuple(active[i].solution[:k])) for i, k in wanted])
      for (i, k), st in zip(wanted, stats):
        active[i].p[k], active[i].stats[k] = st.p, st
    for i in list(active):
      q = active[i]
      try:
        q.need = q.search.send({k: q.p[k] for k in q.need})
      except StopIteration as done:
        results[i]["pivots"], results[i]["pairs"] = _pairs(q, done.value)
        del active[i]
  return results


def _pairs(q: _Question, found) -> tuple[list[dict], list[dict]]:
  prompt = rollouts.question_prompt(q.record)
  pivots, pairs = [], []
  for k, before, after in found:
    pivot = Pivot(k, q.solution[k], before, after)
    pivots.append(dataclasses.asdict(pivot))
    chosen_rejected = pivot_pair(pivot, q.stats[k])
    if chosen_rejected:
      pairs.append({"prompt_ids": prompt + q.solution[:k], "chosen_ids": [chosen_rejected[0]],
                    "rejected_ids": [chosen_rejected[1]], "p_before": before, "p_after": after,
                    "question_id": q.record["id"], "position": k})
  return pivots, pairs


def balance(pairs: list[dict]) -> list[dict]:
  """The pairs, less the last ones (in order) of whichever orientation of two tokens A and B is in
  excess, where pairs prefer A to B at some questions and B to A at others. Questions the model is
  unsure of lean to the answer it under-predicts (a model that favours "even" is unsure of more
  "odd" questions), and DPO learns that lean as a shift toward one token before it learns which one
  each question calls for; balanced, the shift's gradient cancels. A pair of tokens seen in one
  orientation only (most pivots of free-form solutions) is kept as it is."""
  count = collections.Counter((p["chosen_ids"][0], p["rejected_ids"][0]) for p in pairs)
  room = {(a, b): min(n, count[b, a]) if count[b, a] else n for (a, b), n in count.items()}
  kept = []
  for p in pairs:
    key = p["chosen_ids"][0], p["rejected_ids"][0]
    if room[key]:
      room[key] -= 1
      kept.append(p)
  return kept


def merge(out: str, questions: list[dict], process_count: int, balanced: bool = True) -> dict | None:
  """Once every process's log holds all its questions: writes OUT's pairs in question order (cut by
  `balance` if `balanced`) and returns the counts (questions, searched, pivots, pairs found, pairs
  written); None until then."""
  logged = {}
  for index in range(process_count):
    logged.update(jsonl_log.read(jsonl_log.part_path(out + ".log.jsonl", index, process_count), "question_id",
                                 repair=False))
  if any(q["id"] not in logged for q in questions):
    return None
  results = [logged[q["id"]] for q in questions]
  found = [pair for r in results for pair in r["pairs"]]
  pairs = balance(found) if balanced else found
  jsonl_log.write_atomic(out, pairs)
  return {"questions": len(results), "searched": sum(r["searched"] for r in results),
          "pivots": sum(len(r["pivots"]) for r in results), "found": len(found), "pairs": len(pairs)}


def claim(out: str, model: dict, questions: list[dict], settings, process_index: int = 0,
          process_count: int = 1, overwrite: bool = False, flag: str = "--overwrite") -> None:
  """OUT's fingerprint (store/fingerprint.py): a rerun with another model, questions or settings
  (batching aside) is refused, or with overwrite starts over."""
  made = fingerprint.settings_identity(settings, BATCHING)
  log = jsonl_log.part_path(out + ".log.jsonl", process_index, process_count)
  fingerprint.claim(out, {"model": model, "questions": fingerprint.records_identity(questions), "settings": made,
                          "process_count": process_count}, [log, out], overwrite, flag)


def run(roller: Roller, questions: list[dict], out: str, settings: ml_collections.ConfigDict,
        process_index: int = 0, process_count: int = 1, progress=sys.stderr) -> dict:
  """Searches this process's share of `questions` not yet in its log; writes OUT when all are
  (claim it first). Returns counts: questions, searched, pivots, pairs (found: before `balance`),
  rollouts, seconds, merged."""
  check_settings(settings)
  log = jsonl_log.part_path(out + ".log.jsonl", process_index, process_count)
  mine = questions[process_index::process_count]
  done = jsonl_log.read(log, "question_id")
  start, step = time.monotonic(), settings.questions_per_round
  for begin in range(0, len(mine), step):
    batch = mine[begin:begin + step]
    if all(q["id"] in done for q in batch):
      continue
    results = search(roller, batch, settings)
    jsonl_log.append(log, [r for r in results if r["question_id"] not in done])
    done.update((r["question_id"], r) for r in results)
    if progress:
      rate = roller.rollouts / max(time.monotonic() - start, 1e-9)
      print(f"pts: {min(begin + step, len(mine))}/{len(mine)} questions, "
            f"{sum(len(r['pairs']) for r in done.values())} pairs, {rate:.0f} rollouts/s", file=progress)
  logged = [done[q["id"]] for q in mine]
  return {"questions": len(mine), "searched": sum(r["searched"] for r in logged),
          "pivots": sum(len(r["pivots"]) for r in logged), "pairs": sum(len(r["pairs"]) for r in logged),
          "rollouts": roller.rollouts, "seconds": time.monotonic() - start,
          "merged": merge(out, questions, process_count, settings.balance) is not None}


def parse_args(argv=None) -> argparse.Namespace:
  p = flags.Parser("python -m phi4_jax.posttrain.pts", __doc__)
  flags.add_model_flags(p)
  p.add_argument("--questions", required=True, help="JSONL of questions (see posttrain/oracles.py)")
  p.add_argument("--out", required=True, help="JSONL of pairs (token ids)")
  p.add_argument("--process_index", type=flags.ruled(fields.integer(0)), default=None,
                 help="default: jax.process_index()")
  p.add_argument("--process_count", type=flags.ruled(fields.integer(1)), default=None,
                 help="default: jax.process_count()")
  flags.add_overwrite_flag(p)
  flags.add_settings_flags(p, FIELDS, group="settings")  # (a recipe's config.<stage>.settings)
  args = p.parse_args(argv)
  if (args.process_index is None) != (args.process_count is None):
    p.error("--process_index and --process_count go together")
  if args.process_index is not None and args.process_index >= args.process_count:
    p.error(f"--process_index={args.process_index}: must be < --process_count={args.process_count}")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  import jax

  from phi4_jax import distributed, inference
  distributed.initialize()
  settings = flags.settings(args, FIELDS)
  check_settings(settings)
  questions = read_questions(args.questions)
  fingerprint.refuse_input_as_output(args.out, {"--questions": args.questions})
  index = jax.process_index() if args.process_index is None else args.process_index
  count = jax.process_count() if args.process_count is None else args.process_count
  model = fingerprint.model_identity(args.workdir or args.hf_dir, args.step)
  claim(args.out, model, questions, settings, index, count, args.overwrite)
  cfg, params = inference.load(args.workdir or args.hf_dir, args.step)
  summary = run(Roller(params, cfg, settings), questions, args.out, settings, index, count)
  print(json.dumps(summary))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:  # bad arguments or files: one line, no traceback
    sys.exit(f"error: {e}")

"""The plurality filter (docs/RECIPE.md, "Synthetic data and hygiene"): ground truth by majority vote
for questions that have none.

num_samples answers are sampled per question and normalised (the final answer's numbers by value,
else its words; for multiple choice the letter after `Answer:`). A question is dropped as
`too_easy` when at least max_share of the answers agree (default 1.0: all of them), and as
`no_plurality` when no answer has a plurality: the most common one ties with another, is given by
a single sample, or has a share below min_share. A kept question gets the plurality answer as its
`answer`, ready for Pivotal Token Search and rejection sampling.

  python -m phi4_jax.posttrain.plurality --workdir=MODEL --questions=Q.jsonl --out=KEPT.jsonl
"""

from __future__ import annotations

import collections
import json
import sys

import ml_collections

from phi4_jax import fields, flags
from phi4_jax.data.synthetic import numbers
from phi4_jax.posttrain import oracles, rollouts
from phi4_jax.store import fingerprint, jsonl_log
from phi4_jax.posttrain.questions import read_questions

FIELDS = fields.Group(
    rollouts.SAMPLING.without("num_rollouts").with_defaults(temperature=0.7),
    num_samples=fields.Field(8, fields.integer(2), "answers sampled per question"),
    max_share=fields.Field(1.0, fields.number(0, 1, low_open=True),
                           "drop as too easy when at least this share of the answers agree"),
    min_share=fields.Field(0.0, fields.number(0, 1),
                           "drop as ambiguous when the plurality answer's share is below this"),
    questions_per_call=fields.Field(16, fields.integer(1), "questions sampled together"),
)
RULES = FIELDS.rules


def plurality_fields() -> ml_collections.ConfigDict:
  return FIELDS.config()


def normalize(completion: str, kind: str = "final_answer") -> str | None:
  """The comparable form of a completion's answer, or None when it states none."""
  if kind == "multiple_choice":
    return oracles.choice_letter(completion)
  answer = oracles.plain_fractions(oracles.final_answer(completion))
  try:
    values = numbers(answer)
  except (ValueError, ZeroDivisionError):
    return None
  if values:
    return " ".join(str(v) for v in values)
  return oracles.words(answer) or None


def vote(answers: list[str | None], *, max_share: float = 1.0, min_share: float = 0.0) -> tuple[str | None, str]:
  """(plurality answer or None, why): "kept", "too_easy" or "no_plurality"."""
  counts = collections.Counter(a for a in answers if a is not None).most_common()
  if not counts:
    return None, "no_plurality"
  top, n = counts[0]
  share = n / len(answers)
  if share >= max_share - 1e-9:
    return None, "too_easy"
  if n < 2 or (len(counts) > 1 and counts[1][1] == n) or share < min_share:
    return None, "no_plurality"
  return top, "kept"


def claim(out: str, model: dict, questions: list[dict], settings, overwrite: bool = False) -> None:
  """OUT's fingerprint (store/fingerprint.py): another model, questions or settings is refused."""
  made = fingerprint.settings_identity(settings, ("max_batch",))
  fingerprint.claim(out, {"model": model, "questions": fingerprint.records_identity(questions),
                          "settings": made}, [out + ".log.jsonl", out], overwrite)


def run(roller: rollouts.Roller, questions: list[dict], out: str, settings: ml_collections.ConfigDict,
        progress=sys.stderr) -> dict:
  """Votes on every question not yet in OUT.log.jsonl (claim it first); writes the kept ones to
  OUT. Returns counts."""
  FIELDS.check(settings, "plurality")
  log = out + ".log.jsonl"
  done = jsonl_log.read(log, "question_id")
  todo = [q for q in questions if q["id"] not in done]
  n = settings.num_samples
  for begin in range(0, len(todo), settings.questions_per_call):
    batch = todo[begin:begin + settings.questions_per_call]
    outs = roller.sample([rollouts.question_prompt(q) for q in batch], n,
                         rollouts.sample_keys([(q["id"], 0) for q in batch], n))
    results = []
    for i, q in enumerate(batch):
      kind = q.get("kind", "final_answer")
      answers = [normalize(rollouts.TOKENIZER.decode(rollouts.content(c)), kind) for c in outs[i * n:(i + 1) * n]]
      answer, why = vote(answers, max_share=settings.max_share, min_share=settings.min_share)
      results.append({"question_id": q["id"], "verdict": why, "answer": answer, "answers": answers})
    jsonl_log.append(log, results)
    done.update((r["question_id"], r) for r in results)
    if progress:
      print(f"plurality: {len(done)}/{len(questions)} questions", file=progress)
  kept = [{**q, "answer": done[q["id"]]["answer"], "plurality": done[q["id"]]["answers"]}
          for q in questions if done[q["id"]]["verdict"] == "kept"]
  jsonl_log.write_atomic(out, kept)
  verdicts = collections.Counter(done[q["id"]]["verdict"] for q in questions)
  return {"questions": len(questions), **{k: verdicts.get(k, 0) for k in ("kept", "too_easy", "no_plurality")}}


def main(argv=None) -> None:
  p = flags.Parser("python -m phi4_jax.posttrain.plurality", __doc__)
  flags.add_model_flags(p)
  p.add_argument("--questions", required=True)
  p.add_argument("--out", required=True)
  flags.add_overwrite_flag(p)
  flags.add_settings_flags(p, FIELDS, group="settings")  # (a recipe's config.<stage>.settings)
  args = p.parse_args(argv)
  from phi4_jax import inference
  settings = flags.settings(args, FIELDS)
  questions = read_questions(args.questions, need_answer=False)
  fingerprint.refuse_input_as_output(args.out, {"--questions": args.questions})
  claim(args.out, fingerprint.model_identity(args.workdir or args.hf_dir, args.step), questions, settings,
        args.overwrite)
  cfg, params = inference.load(args.workdir or args.hf_dir, args.step)
  print(json.dumps(run(rollouts.Roller(params, cfg, settings), questions, args.out, settings)))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")

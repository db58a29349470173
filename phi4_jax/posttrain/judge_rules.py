"""The judge's rules: the rubric, strict verdict parsing, the pair choice and the rule-based judge.

See judge.py for the stage they serve.
"""

from __future__ import annotations

import re
from importlib import resources

from phi4_jax.posttrain import oracles

CRITERIA = ("accuracy", "style", "detail")
RUBRIC = resources.files("phi4_jax.posttrain").joinpath("judge_rubric.txt").read_text(encoding="utf-8")
_SCORE = re.compile(r"(accuracy|style|detail)\s*:\s*([1-5])", re.IGNORECASE)


def parse_scores(verdict: str) -> dict[str, int] | None:
  """{"accuracy", "style", "detail"} from a verdict of exactly three `name: N` lines (N in 1..5,
  each name once, nothing else but blank lines), else None."""
  lines = [line.strip() for line in verdict.strip().splitlines() if line.strip()]
  scores = {}
  for line in lines:
    m = _SCORE.fullmatch(line)
    if not m or m.group(1).lower() in scores:
      return None
    scores[m.group(1).lower()] = int(m.group(2))
  return scores if len(scores) == 3 else None


def mean(scores: dict[str, int]) -> float:
  return sum(scores[c] for c in CRITERIA) / 3


def choose_pair(scored: list[tuple[str, dict]]) -> tuple[int, int, str] | None:
  """(chosen index, rejected index, rule) of (response, scores) pairs: the best and the worst by
  (accuracy, mean); rule "accuracy" when accuracy decides, "overall" when the mean does; None on
  a full tie (or fewer than two scored responses)."""
  if len(scored) < 2:
    return None
  key = lambda i: (scored[i][1]["accuracy"], mean(scored[i][1]))
  order = sorted(range(len(scored)), key=lambda i: (key(i), -i))  # ties: the earlier response
  best, worst = order[-1], order[0]
  if key(best) == key(worst):
    return None
  rule = "accuracy" if scored[best][1]["accuracy"] > scored[worst][1]["accuracy"] else "overall"
  return best, worst, rule


def request_text(record: dict) -> str:
  messages = record.get("messages") or [{"role": "user", "content": record["question"]}]
  return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def rubric_messages(record: dict, response: str) -> list[dict]:
  return [{"role": "user", "content": RUBRIC.format(request=request_text(record), response=response)}]


def oracle_scores(record: dict, response: str) -> dict[str, int]:
  """The rule-based judge: accuracy 5 when the prompt's oracle accepts the response (1 when not;
  3 when the prompt has no ground truth); style from its form (a final-answer line, no repeated
  line); detail from the working shown (`= <number>` computations, up to 4)."""
  if "answer" in record or "tests" in record:
    accuracy = 5 if oracles.check(record, response) else 1
  else:
    accuracy = 3
  lines = [line.strip() for line in response.splitlines() if line.strip()]
  no_answer_line = not re.search(r"answer\s*:", response, re.IGNORECASE)
  repeats = len(set(lines)) < len(lines)
  style = 5 - 2 * no_answer_line - 2 * repeats
  computations = len(re.findall(r"=\s*-?\d", response))
  return {"accuracy": accuracy, "style": max(1, style), "detail": 1 + min(4, computations)}

"""The judge's rules: the rubric, strict verdict parsing, the pair choice and the rule-based judge.

See judge.py for the stage they serve. The rule-based judge (`oracle_scores`) scores a response
1-5 on the rubric's three criteria by these rules:

  empty     a blank response scores 1 on all three (a real answer, and the worst one).
  accuracy  where the answer is stated: the text after the response's last `Final answer:` (the
            rest of that line, else the next non-blank line), checked by the prompt's oracle
            (oracles.check on `Final answer: <that text>`) -> 5 when right, 1 when wrong or when no
            `Final answer:` is stated; a python prompt's code runs its tests (oracles.check) -> 5 or
            1; a prompt without ground truth (no answer or tests) -> 3.
  readable  the prose, i.e. the response without its final-answer statement and ``` code blocks,
            is readable when: >= 95% of its non-space characters are printable ASCII or common
            math signs (PLAIN_SIGNS); >= 90% of its words (runs of 2+ letters) are written as words
            are (lower case, Capitalized or UPPER CASE ASCII); with 3+ words, >= 20% of them are
            common English or arithmetic words (COMMON_WORDS); and no word is repeated more than
            3 times in a row. Unreadable text (gibberish, degenerate repetition) scores style 1 and
            detail 1, whatever it ends with.
  style     readable: 2, plus 1 each for: it states a final answer (`Final answer:`; a python
            prompt: a ``` code block); that statement is the only one and ends the response; no
            line or sentence is repeated.
  detail    readable: 1 + the distinct true computations shown, up to 4: equations whose two sides
            are arithmetic on numbers (+ - − × * · / ÷, parentheses; at least one operator), equal
            when evaluated exactly (a decimal side may be rounded to its digits), e.g. `3 × 4 =
            12`, `-80 / 10 = -8`, `84 = 2 × 36 + 12`; false ones count nothing.

These are cheap stand-ins for a model judge: a few words of gibberish can pass as readable (the
word share needs 3+ words), and prose about something else reads as well as prose on topic.

A prompt's pair (pick_pair) is its best and worst response by (accuracy, mean of the three), of
two different responses (stripped texts differ) whose scores parsed and differ; else no pair, for
a reason in NO_PAIR_REASONS.
"""

from __future__ import annotations

import ast
import re
import string
from fractions import Fraction
from importlib import resources

from phi4_jax.posttrain import oracles

CRITERIA = ("accuracy", "style", "detail")
RUBRIC = resources.files("phi4_jax.posttrain").joinpath("judge_rubric.txt").read_text(encoding="utf-8")
_SCORE = re.compile(r"(accuracy|style|detail)\s*:\s*([1-5])", re.IGNORECASE)
_FINAL = re.compile(r"final\s+answer\s*:", re.IGNORECASE)
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
# printable ASCII and common math and typographic signs: what readable prose is (nearly) made of
PLAIN_SIGNS = frozenset(string.ascii_letters + string.digits + string.punctuation
                        + "×−·÷²³√π°≤≥≠≈…‘’“”–—")
# common English function words and the words of worked arithmetic: readable prose uses many of them
COMMON_WORDS = frozenset("""
a an the and or but if then so because since as than that this these those it its is are was were be
been being am do does did done has have had not no yes of in on at to for from by with without into
onto over under about after before between each every all any both either some more most less least
many much few one two three four five ten first second third last next same other others we you he
she they our your their his her them us me my which what when where who why how there here can could
will would should must may might let just also only now out up down very too such while until again
once per like make makes made take takes give gives gave giving get gets see note well even odd
times plus minus equals equal sum product difference quotient total result results answer final step
steps solve solving solution check add adding added subtract subtracting multiply multiplying
multiplied divide dividing divided division multiplication addition subtraction number numbers value
values remainder common find found know term terms side sides both left right half twice double
time rate area length width height base square root power zero positive negative whole integer
fraction fractions decimal percent equation equations unknown simplify simplifies simplified
therefore thus hence since true false correct""".split())
_PY_OPS = str.maketrans({"−": "-", "×": "*", "·": "*", "÷": "/"})
_EXPR_CHARS = frozenset("0123456789.+-−×*·/÷() \t")


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


NO_PAIR_REASONS = ("fewer_than_two_scored", "tie", "identical")


def pick_pair(responses: list[tuple[str, dict | None]]) -> tuple[int, int, str] | str:
  """(chosen index, rejected index, rule) into (response, scores or None) pairs, by choose_pair
  among those whose scores parsed; else why there is none: fewer_than_two_scored, tie (the best
  and the worst score alike) or identical (the best and the worst response are the same text)."""
  scored = [i for i, (_, scores) in enumerate(responses) if scores is not None]
  if len(scored) < 2:
    return "fewer_than_two_scored"
  pair = choose_pair([responses[i] for i in scored])
  if pair is None:
    return "tie"
  chosen, rejected = scored[pair[0]], scored[pair[1]]
  if responses[chosen][0].strip() == responses[rejected][0].strip():
    return "identical"
  return chosen, rejected, pair[2]


def request_text(record: dict) -> str:
  messages = record.get("messages") or [{"role": "user", "content": record["question"]}]
  return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def rubric_messages(record: dict, response: str) -> list[dict]:
  return [{"role": "user", "content": RUBRIC.format(request=request_text(record), response=response)}]


def final_statement(response: str) -> tuple[str, int, int] | None:
  """(the answer stated after the response's last `Final answer:`: the rest of that line, else the
  next non-blank line; where the statement starts; where it ends), or None when none is stated."""
  found = list(_FINAL.finditer(response))
  if not found:
    return None
  pos = found[-1].end()
  for line in response[pos:].split("\n"):
    if line.strip():
      return line.strip(), found[-1].start(), pos + len(line)
    pos += len(line) + 1
  return "", found[-1].start(), len(response)


def readable(prose: str) -> bool:
  """Whether `prose` reads as text (the module docstring's rules); True for text without words."""
  chars = [c for c in prose if not c.isspace()]
  if chars and sum(c in PLAIN_SIGNS for c in chars) < 0.95 * len(chars):
    return False
  tokens = [t for t in (t.strip(".,;:!?()\"'").lower() for t in prose.split()) if t]
  if any(len(set(tokens[i:i + 4])) == 1 for i in range(len(tokens) - 3)):
    return False
  words = [w for w in "".join(c if c.isalpha() else " " for c in prose).split() if len(w) >= 2]
  if not words:
    return True
  plain = sum(bool(re.fullmatch(r"[a-z]+|[A-Z][a-z]+|[A-Z]+", w)) for w in words)
  known = sum(w.lower() in COMMON_WORDS for w in words)
  return plain >= 0.9 * len(words) and (len(words) < 3 or known >= 0.2 * len(words))


def _value(expr: str) -> tuple[Fraction, bool] | None:
  """(exact value, whether an operator is applied) of an arithmetic expression, or None."""
  def walk(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
      return Fraction(repr(node.value)), False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      value, op = walk(node.operand)
      return (-value if isinstance(node.op, ast.USub) else value), op
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
      (a, _), (b, _) = walk(node.left), walk(node.right)
      ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
      return (ops[type(node.op)] if type(node.op) in ops else a / b), True
    raise ValueError("not arithmetic")
  text = expr.translate(_PY_OPS).strip().rstrip(".").strip()
  if not text or len(text) > 200 or not any(c.isdigit() for c in text):
    return None
  try:
    return walk(ast.parse(text, mode="eval").body)
  except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
    return None


def _side(run: str, left: bool) -> tuple[str, Fraction, bool] | None:
  """(text, value, whether an operator is applied) of the longest arithmetic expression that `run`
  (up to 200 characters next to an `=`) ends with (left) or starts with, cut at spaces."""
  parts = run.split(" ")
  for k in range(len(parts)):
    text = " ".join(parts[k:] if left else parts[:len(parts) - k]).strip()
    found = _value(text)
    if found:
      return (text, *found)
  return None


def _equal(a: tuple, b: tuple) -> bool:
  if a[1] == b[1]:
    return True
  for text, _, _ in (a, b):  # a decimal literal may be the other side rounded to its digits
    m = re.fullmatch(r"-?\d+\.(\d+)\.?", text.replace("−", "-"))
    if m and abs(a[1] - b[1]) <= Fraction(1, 2 * 10 ** len(m.group(1))):
      return True
  return False


def true_equations(text: str) -> int:
  """The distinct true computations in `text` (see the module docstring's detail)."""
  found = set()
  for i, ch in enumerate(text):
    if ch != "=" or text[i - 1:i] in ("<", ">", "!", "=") or text[i + 1:i + 2] == "=":
      continue
    j, k = i, i + 1
    while j > 0 and text[j - 1] in _EXPR_CHARS:
      j -= 1
    while k < len(text) and text[k] in _EXPR_CHARS:
      k += 1
    left, right = _side(text[max(j, i - 200):i], True), _side(text[i + 1:min(k, i + 201)], False)
    if left and right and (left[2] or right[2]) and _equal(left, right):
      found.add((left[0], right[0]))
  return len(found)


def _python(record: dict) -> bool:
  return "tests" in record or record.get("kind") == "python"


def _accuracy(record: dict, response: str, stated: tuple | None) -> int:
  if _python(record):
    return 5 if oracles.check(record, response) else 1
  if "answer" not in record:
    return 3
  return 5 if stated is not None and oracles.check(record, f"Final answer: {stated[0]}") else 1


def oracle_scores(record: dict, response: str) -> dict[str, int]:
  """The rule-based judge's scores of `response` to prompt `record` (the module docstring's rules)."""
  if not response.strip():
    return {"accuracy": 1, "style": 1, "detail": 1}
  stated = final_statement(response)
  accuracy = _accuracy(record, response, stated)
  if _python(record):
    blocks = list(re.finditer(r"```.*?```", response, re.DOTALL))
    states, ends = bool(blocks), bool(blocks) and not response[blocks[-1].end():].strip()
    prose = _FENCE.sub(" ", response)
  else:
    states = stated is not None
    ends = states and len(_FINAL.findall(response)) == 1 and not response[stated[2]:].strip()
    prose = _FENCE.sub(" ", response if not states else response[:stated[1]] + response[stated[2]:])
  if not readable(prose):
    return {"accuracy": accuracy, "style": 1, "detail": 1}
  parts = [part.strip() for part in re.split(r"\n|(?<=[.!?])\s+", response) if part.strip()]
  style = 2 + states + ends + (len(set(parts)) == len(parts))
  return {"accuracy": accuracy, "style": style, "detail": 1 + min(4, true_equations(response))}

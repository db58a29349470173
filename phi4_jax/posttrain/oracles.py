"""Oracles: is a completion a success for its question? (docs/RECIPE.md, "Pivotal Token Search")

A question record says what success means by its `kind` (default "final_answer"):

  final_answer      {"question", "answer"}: the completion's final answer (the last `\\boxed{...}`,
                    else the text after the last `Answer:` (e.g. "Final answer:"), else its last
                    line) states the expected numbers in order (integers, decimals and fractions
                    compare by value: 0.5 == 1/2; 1,000 == 1000): the first numbers after a
                    marker (trailing text may follow), the last ones of a last line; or, for an
                    answer without numbers, the same words after normalising case, whitespace and
                    punctuation at either end
  multiple_choice   {"question", "answer": "B"}: the letter after the last `Answer:`
  python            {"question", "tests"}: the completion's code (its last ```python block, else
                    all of it) followed by `tests` runs to its end without an exception in the
                    sandbox (sandbox.run_python: exiting early, with any status, fails)

Only the completion is checked, never the prompt: numbers in a question must not count.
"""

from __future__ import annotations

import re

from phi4_jax.data.synthetic import numbers
from phi4_jax.posttrain.sandbox import Result, SandboxUnavailable, run_python

__all__ = ["KINDS", "Result", "SandboxUnavailable", "check", "check_choice", "check_final_answer",
           "check_python", "choice_letter", "final_answer", "plain_fractions", "run_python", "words"]

KINDS = ("final_answer", "multiple_choice", "python")
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_CHOICE = re.compile(r"answer\s*:\s*\$?\(?\s*([A-Za-z])\s*\)?\$?(?![A-Za-z])", re.IGNORECASE)
_CODE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def _last_boxed(text: str) -> str | None:
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  depth, i = 1, start + len("\\boxed{")
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j]
  return None  # unbalanced: no boxed answer


def final_answer(completion: str) -> str:
  """The part of `completion` that states its final answer (see the module docstring)."""
  return _final_statement(completion)[0]


def _final_statement(completion: str) -> tuple[str, bool]:
  """(the final answer's text, whether a `\\boxed{}` or `Answer:` marked it)."""
  boxed = _last_boxed(completion)
  if boxed is not None:
    return boxed.strip(), True
  found = list(_ANSWER.finditer(completion))
  if found:  # the rest of the last `Answer:`'s line, else the next non-blank line
    rest = [line.strip() for line in completion[found[-1].end():].splitlines()]
    return next((line for line in rest if line), ""), True
  lines = [line for line in completion.strip().splitlines() if line.strip()]
  return (lines[-1].strip() if lines else ""), False


def words(text: str) -> str:
  """Lower case, single spaces, no punctuation or `$` at either end ("Answer:: Even." -> "even")."""
  return " ".join(text.lower().split()).strip(" .,:;!?$")


def plain_fractions(text: str) -> str:
  """TeX fractions as p/q (`\\frac{1}{2}` -> 1/2)."""
  return re.sub(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", text)


def check_final_answer(expected: str, completion: str) -> bool:
  """True when the completion's final answer states `expected`'s numbers in order (all of them,
  by value; the first ones after a marker, so trailing text may follow, else the last ones of the
  last line), or its words when `expected` has none."""
  text, marked = _final_statement(completion)
  given = plain_fractions(text)
  want = numbers(expected)
  if not want:
    return bool(words(expected)) and words(given) == words(expected)
  try:
    got = numbers(given)
  except (ValueError, ZeroDivisionError):  # e.g. "1/0"
    return False
  return (got[:len(want)] if marked else got[-len(want):]) == want


def choice_letter(completion: str) -> str | None:
  """The letter after the completion's last `Answer:` (upper case), or None."""
  found = list(_CHOICE.finditer(completion))
  return found[-1].group(1).upper() if found else None


def check_choice(expected: str, completion: str) -> bool:
  """True when the letter after the completion's last `Answer:` is `expected` (case-insensitive)."""
  return choice_letter(completion) == expected.strip().upper()


def program_of(completion: str) -> str:
  """The code in a completion: its last fenced block, else the whole text."""
  blocks = _CODE.findall(completion)
  return blocks[-1] if blocks else completion


def check_python(tests: str, completion: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> Result:
  """The completion's code followed by `tests`, run in the sandbox."""
  return run_python(program_of(completion) + "\n\n" + tests + "\n", timeout_s=timeout_s,
                    memory_mb=memory_mb)


def check(record: dict, completion: str) -> bool:
  """Success of `completion` for question `record` (by its `kind`)."""
  kind = record.get("kind", "final_answer")
  if kind == "final_answer":
    return check_final_answer(str(record["answer"]), completion)
  if kind == "multiple_choice":
    return check_choice(str(record["answer"]), completion)
  if kind == "python":
    return check_python(record["tests"], completion).passed
  raise ValueError(f"question {record.get('id', '?')}: kind must be one of {KINDS}, got {kind!r}")

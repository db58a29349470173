"""Generated textbook exercises with worked solutions and checkable final answers.

The embedded corpus's stand-in for Phi-4's synthetic data. Each record keeps `question`,
`solution`, `answer` and the `params` it was drawn from, so post-training can use
`check_answer(record["answer"], reply)` as a success oracle.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
_THOUSANDS = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+)(?![\d,])")  # 1,000 or 12,345,678


def _fmt(x: Fraction) -> str:
  """An exact number as an integer, a terminating decimal, or p/q."""
  x = Fraction(x)
  if x.denominator == 1:
    return str(x.numerator)
  d = x.denominator
  while d % 2 == 0:
    d //= 2
  while d % 5 == 0:
    d //= 5
  if d != 1:
    return f"{x.numerator}/{x.denominator}"
  digits = 0
  while (x * 10**digits).denominator != 1:
    digits += 1
  return f"{float(x):.{digits}f}"


def numbers(text: str) -> list[Fraction]:
  """The numbers in `text`, in order (integers, decimals, p/q; thousands separated by commas)."""
  text = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), text)
  return [Fraction(m) for m in _NUMBER.findall(text.replace(",", " ").replace("\u2212", "-"))]


def check_answer(expected: str, given: str) -> bool:
  """True when `given` states the same numbers as `expected`, in the same order."""
  want = numbers(expected)
  return bool(want) and numbers(given)[-len(want):] == want


def _arithmetic(r: random.Random):
  a, b, c, d = (r.randint(2, 60) for _ in range(4))
  p = b * c
  q = f"Compute {a} + {b} × {c} − {d}."
  s = (f"Multiplication comes before addition and subtraction: {b} × {c} = {p}. "
       f"Then {a} + {p} = {a + p}, and {a + p} − {d} = {a + p - d}.")
  return q, s, str(a + p - d), {"a": a, "b": b, "c": c, "d": d}


def _linear_equation(r: random.Random):
  a, x, b = r.randint(2, 12), r.randint(-20, 20), r.randint(-50, 50)
  c = a * x + b
  q = f"Solve for x: {a}x + {b} = {c}." if b >= 0 else f"Solve for x: {a}x − {-b} = {c}."
  s = (f"Move the constant to the right-hand side: {a}x = {c} − ({b}) = {c - b}. "
       f"Divide both sides by {a}: x = {c - b} / {a} = {x}. Check: {a} × {x} + ({b}) = {c}.")
  return q, s, f"x = {x}", {"a": a, "b": b, "c": c}


def _linear_system(r: random.Random):
  while True:
    a1, b1, a2, b2 = (r.randint(-6, 6) for _ in range(4))
    det = a1 * b2 - a2 * b1
    if det and 0 not in (a1, b1, a2, b2):
      break
  x, y = r.randint(-9, 9), r.randint(-9, 9)
  c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
  q = f"Solve the system {a1}x + ({b1})y = {c1} and {a2}x + ({b2})y = {c2}."
  s = (f"The determinant is {a1}·{b2} − {a2}·{b1} = {det}, so the solution is unique. "
       f"By Cramer's rule x = ({c1}·{b2} − {c2}·{b1}) / {det} = {c1 * b2 - c2 * b1} / {det} = {x} "
       f"and y = ({a1}·{c2} − {a2}·{c1}) / {det} = {a1 * c2 - a2 * c1} / {det} = {y}.")
  return q, s, f"x = {x}, y = {y}", {"a1": a1, "b1": b1, "c1": c1, "a2": a2, "b2": b2, "c2": c2}


_UNITS = [("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("kilograms", "grams", 1000),
          ("hours", "minutes", 60), ("minutes", "seconds", 60), ("litres", "millilitres", 1000),
          ("inches", "centimetres", Fraction(254, 100)), ("feet", "inches", 12)]


def _unit_conversion(r: random.Random):
  big, small, factor = r.choice(_UNITS)
  value = Fraction(r.randint(1, 400), r.choice([1, 2, 4, 5, 10]))
  if r.random() < 0.5:
    q = f"Convert {_fmt(value)} {big} to {small}."
    s = (f"One of the {big} is {_fmt(factor)} {small}, so multiply: "
         f"{_fmt(value)} × {_fmt(factor)} = {_fmt(value * factor)}.")
    return q, s, f"{_fmt(value * factor)} {small}", {"value": _fmt(value), "factor": _fmt(factor)}
  amount = value * factor
  q = f"Convert {_fmt(amount)} {small} to {big}."
  s = (f"One of the {big} is {_fmt(factor)} {small}, so divide: "
       f"{_fmt(amount)} / {_fmt(factor)} = {_fmt(value)}.")
  return q, s, f"{_fmt(value)} {big}", {"value": _fmt(amount), "factor": _fmt(1 / Fraction(factor))}


def _percentage(r: random.Random):
  p, n = r.choice([5, 10, 12, 15, 20, 25, 30, 40, 45, 50, 60, 75, 80, 120]), r.randint(4, 900)
  result = Fraction(p * n, 100)
  q = f"What is {p}% of {n}?"
  s = f"{p}% means {p}/100, so {p}/100 × {n} = {p * n}/100 = {_fmt(result)}."
  return q, s, _fmt(result), {"p": p, "n": n}


def _fraction_sum(r: random.Random):
  a, b, c, d = r.randint(1, 9), r.randint(2, 12), r.randint(1, 9), r.randint(2, 12)
  total = Fraction(a, b) + Fraction(c, d)
  q = f"Add the fractions {a}/{b} + {c}/{d} and simplify."
  s = (f"Over the common denominator {b * d}: {a * d}/{b * d} + {c * b}/{b * d} = {a * d + c * b}/{b * d}, "
       f"which simplifies to {total.numerator}/{total.denominator}.")
  return q, s, f"{total.numerator}/{total.denominator}", {"a": a, "b": b, "c": c, "d": d}


def _gcd(r: random.Random):
  g = r.randint(2, 30)
  x, y = g * r.randint(2, 40), g * r.randint(2, 40)
  steps, (u, v) = [], (max(x, y), min(x, y))
  while v:
    steps.append(f"{u} = {u // v} × {v} + {u % v}")
    u, v = v, u % v
  q = f"Find the greatest common divisor of {x} and {y}."
  s = "Use Euclid's algorithm: " + "; ".join(steps) + f". The last non-zero remainder is {u}."
  return q, s, str(u), {"x": x, "y": y}


def _quadratic(r: random.Random):
  r1, r2 = sorted((r.randint(-12, 12), r.randint(-12, 12)))
  p, c = -(r1 + r2), r1 * r2
  q = f"Solve x² + ({p})x + ({c}) = 0."
  s = (f"Look for two numbers with sum {-p} and product {c}: {r1} and {r2}. "
       f"So x² + ({p})x + ({c}) = (x − ({r1}))(x − ({r2})) = 0, giving x = {r1} or x = {r2}.")
  return q, s, f"x = {r1} or x = {r2}", {"p": p, "q": c}


def _series(r: random.Random):
  a, d, n = r.randint(-10, 20), r.randint(1, 9), r.randint(5, 40)
  total = n * (2 * a + (n - 1) * d) // 2
  q = f"Find the sum of the first {n} terms of the arithmetic sequence {a}, {a + d}, {a + 2 * d}, ..."
  s = (f"The first term is {a} and the difference {d}, so the last term is {a} + {n - 1} × {d} = "
       f"{a + (n - 1) * d}. The sum is {n} × ({a} + {a + (n - 1) * d}) / 2 = {total}.")
  return q, s, str(total), {"a": a, "d": d, "n": n}


def _rate(r: random.Random):
  v, t = r.randint(3, 120), Fraction(r.randint(1, 16), r.choice([1, 2, 4]))
  q = f"A cyclist rides at a constant {v} km/h for {_fmt(t)} hours. How far does she travel?"
  s = f"Distance is speed times time: {v} km/h × {_fmt(t)} h = {_fmt(v * t)} km."
  return q, s, f"{_fmt(v * t)} km", {"v": v, "t": _fmt(t)}


def _modpow(r: random.Random):
  a, k, m = r.randint(2, 30), r.randint(5, 60), r.randint(7, 97)
  steps, result, base, e = [], 1, a % m, k
  while e:
    if e & 1:
      result = result * base % m
      steps.append(f"multiply in {base}: running result {result}")
    base, e = base * base % m, e >> 1
    if e:
      steps.append(f"square the base: {base}")
  q = f"Compute {a}^{k} mod {m}."
  s = f"Square and multiply over the bits of {k} ({k:b} in binary): " + "; ".join(steps) + "."
  return q, s, str(result), {"a": a, "k": k, "m": m}


def _triangle(r: random.Random):
  b, h = r.randint(2, 60), r.randint(2, 60)
  area = Fraction(b * h, 2)
  q = f"A triangle has base {b} cm and height {h} cm. What is its area?"
  s = f"The area of a triangle is half of base times height: {b} × {h} / 2 = {_fmt(area)}."
  return q, s, f"{_fmt(area)} cm²", {"b": b, "h": h}


TOPICS = {"arithmetic": _arithmetic, "linear equation": _linear_equation,
          "linear system": _linear_system, "unit conversion": _unit_conversion,
          "percentage": _percentage, "fractions": _fraction_sum, "greatest common divisor": _gcd,
          "quadratic equation": _quadratic, "arithmetic series": _series, "rates": _rate,
          "modular arithmetic": _modpow, "geometry": _triangle}


def exercise(index: int, seed: int = 0, attempt: int = 0) -> dict:
  """Exercise `index` (deterministic for (index, seed, attempt)) as a corpus record; attempt k > 0
  keeps attempt 0's topic and redraws its numbers (families.py redraws an item that collides with
  a held-out one)."""
  r = random.Random(f"{seed}-{index}")
  topic = r.choice(sorted(TOPICS))
  if attempt:
    r = random.Random(f"{seed}-{index}-{attempt}")
  question, solution, answer, params = TOPICS[topic](r)
  text = f"Exercise ({topic}). {question}\n\nSolution. {solution}\n\nFinal answer: {answer}"
  return {"id": f"synthetic-{index:06d}", "topic": topic, "question": question, "solution": solution,
          "answer": answer, "params": params, "text": text}


# Post-training records made from drawn items (families.py says which items each split draws).
TUTOR = "You are a careful math tutor. Show your steps and end with 'Final answer:'."


def worked_solution(record: dict) -> str:
  """An exercise's assistant reply: the worked solution, then `Final answer: <answer>`."""
  return f"{record['solution']}\n\nFinal answer: {record['answer']}"


def _perturbed(number: str, r: random.Random) -> str:
  value = Fraction(number)
  return _fmt(value + r.choice([-3, -2, -1, 1, 2, 3, 5, 10]))


def wrong_final_answer(answer: str, r: random.Random) -> str:
  """`answer` with its last number changed (check_answer then fails on it)."""
  last = list(_NUMBER.finditer(answer))[-1]
  return answer[:last.start()] + _perturbed(last.group(), r) + answer[last.end():]


def wrong_step(solution: str, r: random.Random) -> str:
  """`solution` with one number of an intermediate step changed (not its last number)."""
  found = list(_NUMBER.finditer(solution))
  if len(found) < 2:
    return solution
  m = found[r.randrange(len(found) - 1)]
  return solution[:m.start()] + _perturbed(m.group(), r) + solution[m.end():]


def sft_conversation(index: int, ex: dict, second) -> dict:
  """SFT record `index`: exercise `ex` (sometimes after a tutor system turn) or it and `second()`
  in a row, the assistant replying with worked solutions. {"id", "messages", "answer" (of the
  last), "topic"}."""
  r = random.Random(f"sft-{index}")
  turns = [{"role": "user", "content": ex["question"]},
           {"role": "assistant", "content": worked_solution(ex)}]
  kind = r.random()
  if kind < 0.2:
    turns = [{"role": "system", "content": TUTOR}] + turns
  elif kind < 0.4:
    ex = second()
    turns += [{"role": "user", "content": "Next one: " + ex["question"]},
              {"role": "assistant", "content": worked_solution(ex)}]
  return {"id": f"sft-math-{index:06d}", "messages": turns, "answer": ex["answer"],
          "topic": ex["topic"]}


def dpo_pair(index: int, ex: dict, seed: int) -> dict:
  """A DPO pair (conversation form) of exercise `ex`: chosen = the worked solution; rejected
  (`kind`) = the same solution with a wrong final answer, or with a wrong intermediate step and a
  wrong final answer. Both sides have the same form (working, then `Final answer:`), so only
  correctness tells them apart: a rejected side without working would teach "never answer
  without working", a format shortcut that DPO learns first."""
  r = random.Random(f"dpo-{seed}-{index}")
  kind = r.choice(["wrong_answer", "wrong_step"])
  solution = wrong_step(ex["solution"], r) if kind == "wrong_step" else ex["solution"]
  rejected = f"{solution}\n\nFinal answer: {wrong_final_answer(ex['answer'], r)}"
  return {"id": f"dpo-{seed}-{index:06d}", "messages": [{"role": "user", "content": ex["question"]}],
          "chosen": worked_solution(ex), "rejected": rejected, "answer": ex["answer"],
          "kind": kind, "topic": ex["topic"]}


def multiple_choice(ex: dict, r: random.Random) -> dict:
  """Exercise `ex` as a multiple-choice item: its answer among three wrong final answers."""
  choices = {ex["answer"]}
  while len(choices) < 4:
    choices.add(wrong_final_answer(ex["answer"], r))
  choices = sorted(choices)
  r.shuffle(choices)
  return {"question": ex["question"], "choices": choices, "answer": choices.index(ex["answer"])}


PARITY_LENGTHS = (5, 7, 9)  # digits per list (odd: no ties)
PARITY_SHORT_LENGTHS = (1, 3)  # digits per list of SFT's easy parity questions (families.py's parity_short)


def parity_question(index: int, seed: int, attempt: int = 0, lengths: tuple[int, ...] = PARITY_LENGTHS) -> dict:
  """A question about the parity of a list of digits ("Are there more odd or even numbers in this
  list: 3 8 5 1 6?" -> `Final answer: odd`), the family the colab recipe post-trains on. Its answer
  pools one learnable feature (each digit's parity) over the list, so a small model learns it
  within the colab SFT budget but not perfectly: lists whose counts differ by one are the hard
  ones, and the answer token is pivotal. Answers alternate with the index ("odd" at even indices),
  so every split is balanced: a list whose majority is the other parity has each digit d replaced
  by d xor 1 (parity flipped, digits still uniform). Attempt k > 0 draws another list.
  {"id", "question", "answer", "solution", "topic"}."""
  r = random.Random(f"parity-{seed}-{index}" + (f"-{attempt}" if attempt else ""))
  digits = [r.randrange(10) for _ in range(r.choice(lengths))]
  want_odd = index % 2 == 0
  if (2 * sum(d % 2 for d in digits) > len(digits)) != want_odd:
    digits = [d ^ 1 for d in digits]
  answer = "odd" if want_odd else "even"
  return {"id": f"parity-{seed}-{index:06d}", "answer": answer, "solution": f"Final answer: {answer}",
          "question": f"Are there more odd or even numbers in this list: {' '.join(map(str, digits))}?",
          "topic": "parity"}


def parity_pair(q: dict) -> dict:
  """A DPO pair of parity question `q`: the right answer against the wrong one, in the same form
  (the held-out pairs that score DPO on correctness alone)."""
  wrong = "even" if q["answer"] == "odd" else "odd"
  return {"id": f"dpo-{q['id']}", "messages": [{"role": "user", "content": q["question"]}],
          "chosen": q["solution"], "rejected": f"Final answer: {wrong}", "answer": q["answer"],
          "kind": "wrong_answer", "topic": "parity"}


def parity_conversation(index: int, q: dict) -> dict:
  """SFT record `index` of the parity family: question `q` with its answer as the assistant's reply."""
  return {"id": f"sft-parity-{index:06d}", "answer": q["answer"], "topic": "parity",
          "messages": [{"role": "user", "content": q["question"]},
                       {"role": "assistant", "content": q["solution"]}]}

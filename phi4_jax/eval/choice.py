"""Multiple choice by log-likelihood (MMLU style): the choice the model finds most likely.

Items are {"question", "choices": [text, ...], "answer"} records (answer: the right choice's
index, letter or text) of a JSONL file, or "embedded:exercises" (an exercise of data/families.py's
held-out choice split: its answer among three wrong final answers). Each choice is scored as a
continuation of the question's prompt (answers.prompt: chat or plain; plain continuations start
with a space) in one batched inference.logprobs call. acc takes the highest sum of log-probs;
acc_norm divides it by the choice's length in characters first (lm-evaluation-harness's acc_norm).
"""

from __future__ import annotations

import collections

import numpy as np

from phi4_jax.data import families
from phi4_jax.eval import answers
from phi4_jax.eval.model import TOKENIZER, Model

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def embedded_item(index: int) -> dict:
  return families.choice_item(index)


def answer_index(item: dict, where: str) -> int:
  """The right choice's index from `answer` (an index, a letter or the choice's text)."""
  a, choices = item["answer"], item["choices"]
  if isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(choices):
    return a
  if isinstance(a, str) and len(a.strip()) == 1 and a.strip().upper() in LETTERS[:len(choices)]:
    return LETTERS.index(a.strip().upper())
  if isinstance(a, str) and a in choices:
    return choices.index(a)
  raise ValueError(f"{where}: 'answer' {a!r} is not an index, letter or text of its {len(choices)} choices")


def read(settings) -> tuple[list[dict], list[int]]:
  """(the items of settings.choice_file, each one's right choice), checked: errors name the file
  and line (called before a model loads, and again by run)."""
  path = settings.choice_file
  if path == "embedded:exercises":
    items = [embedded_item(i) for i in range(settings.limit or answers.EMBEDDED_SIZE)]
  else:
    items = answers.read_items(path, ("question", "choices", "answer"), settings.limit)
  gold = []
  for i, item in enumerate(items):
    where = f"{path}:{item.get('line', i + 1)}"
    choices = item["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
      raise ValueError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    if not isinstance(item["question"], str):
      raise ValueError(f"{where}: 'question' must be text, got {type(item['question']).__name__}")
    gold.append(answer_index(item, where))
  return items, gold


def run(model: Model, settings) -> dict:
  """acc and acc_norm on settings.choice_file (the first settings.limit items)."""
  items, gold = read(settings)
  prompts, conts = [], []
  for item in items:
    p = answers.prompt(str(item["question"]), settings.template)
    space = " " if settings.template == "plain" else ""
    for c in item["choices"]:
      prompts.append(p)
      conts.append(TOKENIZER.encode_ordinary(space + str(c)))
  sums = np.asarray([float(lp.sum()) for lp in model.score(prompts, conts)])
  lengths = np.asarray([len(str(c)) + (settings.template == "plain") for it in items for c in it["choices"]])
  samples, start = [], 0
  for i, item in enumerate(items):
    k = len(item["choices"])
    pred, pred_norm = int(np.argmax(sums[start:start + k])), int(np.argmax(sums[start:start + k] / lengths[start:start + k]))
    samples.append({"item": item.get("id", item.get("line", i + 1)), "question": item["question"],
                    "choices": item["choices"], "target": gold[i], "logprobs": sums[start:start + k].tolist(),
                    "pred": pred, "pred_norm": pred_norm, "correct": pred == gold[i], "correct_norm": pred_norm == gold[i]})
    start += k
  n = len(items)
  return {"acc": sum(s["correct"] for s in samples) / n, "acc_norm": sum(s["correct_norm"] for s in samples) / n,
          "majority": max(collections.Counter(gold).values()) / n,  # always the most common gold position
          "chance": sum(1 / len(item["choices"]) for item in items) / n,  # a uniform guess
          "n": n, "samples": samples}

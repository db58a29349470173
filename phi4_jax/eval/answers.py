"""Answer tasks (GSM8K / MATH / MGSM style): generate, extract the final answer, compare.

Items are {"question", "answer"} records of a JSONL file, or an embedded held-out set
("embedded:exercises", the synthetic textbook exercises; "embedded:parity"): the held-out eval
splits of data/families.py, which every split trained on or searched is kept clear of. The final
answer is extracted and compared exactly as the posttrain oracles do (oracles.check_final_answer:
the last \\boxed{}, else the text after the last `Answer:`, else the last line; numbers by value,
so 1,000 == 1000 and 0.5 == 1/2).

Templates: "chat" (the question as a ChatML user turn, for post-trained models) or "plain"
(`Question: ...\\nAnswer:` continued as a document and cut at the next `Question:`, for pretrained
checkpoints).
"""

from __future__ import annotations

import collections

from phi4_jax.data import families
from phi4_jax.eval.model import Model, chat_prompt, plain_prompt
from phi4_jax.posttrain import oracles
from phi4_jax.store import jsonl_log

EMBEDDED_SIZE = families.HELD_OUT_SIZE  # items of an embedded set (before settings.limit)
EMBEDDED = {
    "embedded:exercises": lambda i: families.item("exercises", "eval", i),
    "embedded:parity": lambda i: families.item("parity", "eval", i),
}


def read_items(path: str, need: tuple[str, ...], limit: int = 0) -> list[dict]:
  """The first `limit` (0 = all) records of an embedded set or a JSONL file; a file's record
  without one of `need` is an error naming the file and line."""
  if path in EMBEDDED:
    return [EMBEDDED[path](i) for i in range(limit or EMBEDDED_SIZE)]
  if path.startswith("embedded:"):
    raise ValueError(f"unknown embedded set {path!r} (known: {', '.join(EMBEDDED)})")
  items = []
  for n, record in jsonl_log.objects(path):
    missing = [k for k in need if k not in record]
    if missing:
      raise ValueError(f"{path}:{n}: missing {', '.join(map(repr, missing))} (an item needs {', '.join(need)})")
    items.append({**record, "line": n})
    if limit and len(items) == limit:
      break
  if not items:
    raise ValueError(f"{path}: no items")
  return items


def read(settings) -> list[dict]:
  """The items of settings.answers_file, checked (a question is text, an answer text or a number;
  errors name the file and line): called before a model loads, and again by run."""
  items = read_items(settings.answers_file, ("question", "answer"), settings.limit)
  for i, item in enumerate(items):
    where = f"{settings.answers_file}:{item.get('line', i + 1)}"
    if not isinstance(item["question"], str) or not item["question"].strip():
      raise ValueError(f"{where}: 'question' must be non-empty text, got {item['question']!r}")
    if isinstance(item["answer"], bool) or not isinstance(item["answer"], (str, int, float)):
      raise ValueError(f"{where}: 'answer' must be text or a number, got {type(item['answer']).__name__}")
  return items


def prompt(question: str, template: str) -> list[int]:
  if template == "chat":
    return chat_prompt(question)
  return plain_prompt(f"Question: {question}\nAnswer:")


def run(model: Model, settings) -> dict:
  """Accuracy on settings.answers_file (the first settings.limit items)."""
  items = read(settings)
  until = ("\nQuestion:",) if settings.template == "plain" else ()
  texts = model.generate([prompt(str(it["question"]), settings.template) for it in items],
                         max_new_tokens=settings.max_new_tokens, until=until, what="answers item")
  correct = [oracles.check_final_answer(str(it["answer"]), text) for it, text in zip(items, texts)]
  samples = [{"item": it.get("id", it.get("line", i + 1)), "question": it["question"], "target": it["answer"],
              "output": text, "extracted": oracles.final_answer(text), "correct": ok}
             for i, (it, text, ok) in enumerate(zip(items, texts, correct))]
  return {"acc": sum(correct) / len(items), "majority": majority(items),
          "empty": sum(not text.strip() for text in texts) / len(items),  # replies with no text at all
          "n": len(items), "samples": samples}


def majority(items: list[dict], candidates: int = 16) -> float:
  """The majority-class baseline: the accuracy of always giving the most common gold answer (the
  best of the `candidates` most frequent ones, each scored by the same oracle as the model)."""
  common = collections.Counter(str(it["answer"]).strip() for it in items).most_common(candidates)
  return max(sum(oracles.check_final_answer(str(it["answer"]), f"Answer: {answer}") for it in items)
             for answer, _ in common) / len(items)

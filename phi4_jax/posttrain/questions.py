"""Question files: JSONL records for the oracles (posttrain/oracles.py), checked line by line."""

from __future__ import annotations

from phi4_jax.posttrain import oracles
from phi4_jax.store import jsonl_log
from phi4_jax.tokenizer import check_messages


def check_record(record: dict, where: str, need_answer: bool = True) -> None:
  """A question record's fields and their types (errors name `where`): `question` text or
  `messages` (a conversation), `kind`, and what its oracle needs: `answer` (text or a number) or,
  for python, `tests` (code)."""
  question, messages = record.get("question"), record.get("messages")
  if question is None and messages is None:
    raise ValueError(f"{where}: a question needs 'question' (text) or 'messages'")
  if question is not None and (not isinstance(question, str) or not question.strip()):
    raise ValueError(f"{where}: 'question' must be non-empty text, got {type(question).__name__} {question!r}")
  if messages is not None:
    check_messages(messages, f"{where}: 'messages'")
  kind = record.get("kind", "final_answer")
  need = "tests" if kind == "python" else "answer"
  if kind not in oracles.KINDS or (need_answer or kind == "python") and need not in record:
    raise ValueError(f"{where}: kind {kind!r} needs {need!r} (kinds: {', '.join(oracles.KINDS)})")
  if "tests" in record and not isinstance(record["tests"], str):
    raise ValueError(f"{where}: 'tests' must be Python code (text), got {type(record['tests']).__name__}")
  answer = record.get("answer")
  if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
    raise ValueError(f"{where}: 'answer' must be text or a number, got {type(answer).__name__}")
  if "id" in record and (isinstance(record["id"], bool) or not isinstance(record["id"], (str, int))):
    raise ValueError(f"{where}: 'id' must be text or an integer, got {type(record['id']).__name__}")


def read_questions(path: str, need_answer: bool = True) -> list[dict]:
  """Question records of a JSONL file, checked (errors name its file and line); ids (default
  `line-N`) unique. need_answer=False: questions without ground truth (the plurality filter's)."""
  records, seen = [], {}
  for n, record in jsonl_log.objects(path):
    check_record(record, f"{path}:{n}", need_answer)
    record = {**record, "id": str(record.get("id", f"line-{n}"))}
    if record["id"] in seen:
      raise ValueError(f"{path}:{n}: id {record['id']!r} already on line {seen[record['id']]}")
    seen[record["id"]] = n
    records.append(record)
  if not records:
    raise ValueError(f"{path}: no questions")
  return records

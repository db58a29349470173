"""Question files: JSONL records for the oracles (posttrain/oracles.py), checked line by line."""

from __future__ import annotations

from phi4_jax.posttrain import oracles
from phi4_jax.store import jsonl_log


def read_questions(path: str, need_answer: bool = True) -> list[dict]:
  """Question records of a JSONL file, checked (errors name its file and line); ids (default
  `line-N`) unique. need_answer=False: questions without ground truth (the plurality filter's)."""
  records, seen = [], {}
  for n, record in jsonl_log.objects(path):
    if not (record.get("question") or record.get("messages")):
      raise ValueError(f"{path}:{n}: a question needs 'question' (text) or 'messages'")
    kind = record.get("kind", "final_answer")
    need = "tests" if kind == "python" else "answer"
    if kind not in oracles.KINDS or (need_answer or kind == "python") and need not in record:
      raise ValueError(f"{path}:{n}: kind {kind!r} needs {need!r} (kinds: {', '.join(oracles.KINDS)})")
    record = {**record, "id": str(record.get("id", f"line-{n}"))}
    if record["id"] in seen:
      raise ValueError(f"{path}:{n}: id {record['id']!r} already on line {seen[record['id']]}")
    seen[record["id"]] = n
    records.append(record)
  if not records:
    raise ValueError(f"{path}: no questions")
  return records

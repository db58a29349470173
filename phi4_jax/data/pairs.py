"""DPO preference pairs: three record forms -> (prompt + chosen, prompt + rejected) token ids.

  text           {"prompt", "chosen", "rejected"}: plain continuation, no chat template: the
                 prompt's ids, then each completion's, all by encode_ordinary (special-token text
                 stays text); nothing is appended
  conversation   {"messages", "chosen", "rejected"}: the prompt is the conversation in the ChatML
                 template plus the generation prompt `<|im_start|>assistant<|im_sep|>`; chosen and
                 rejected are assistant contents, each followed by `<|im_end|>` (an empty reply is
                 the completion `<|im_end|>` alone: a real answer, and a bad one)
  token ids      {"prompt_ids", "chosen_ids", "rejected_ids"}: used exactly as they are (never
                 decoded or re-encoded), e.g. Pivotal Token Search's pairs; ids in [0, vocab)

A record is read as the first form whose key it has (any *_ids key: token ids; else "messages":
conversation; else text). `loss_mask` marks the completion tokens (the targets whose log-probs are
summed), 0 on the prompt. A pair is skipped (counted per source; measure.py reports one line per
source and reason, with the first few files and lines) for: missing_field (a form's field missing,
or not a string / list), bad_messages, invalid_utf8, bad_ids (not integers in [0, vocab)),
empty_prompt, empty_completion (a text or token-id completion with no token), same_completion
(chosen == rejected as token ids: no preference), too_long (both sequences together over seq_len:
a pair is never split).

DPO rows (PAIR_ROW_FIELDS) hold up to `config.data.pairs_per_row` pairs: pair j's chosen sequence
is segment 2j + 1, its rejected sequence segment 2j + 2; `pair_ids` = pair_id(source id, record
index): the record's index in its source (sorted files, then lines or rows), the same every epoch.
"""

from __future__ import annotations

import numpy as np

from phi4_jax.data.chat import check_messages
from phi4_jax.data.fitpack import PAIR_ID_BITS, Item
from phi4_jax.tokenizer import Phi4Tokenizer

PAIR_ROW_FIELDS = ("tokens", "segment_ids", "positions", "loss_mask", "pair_source_ids", "pair_ids")
HOST_ONLY_FIELDS = ("pair_ids",)  # row fields the host reads (the reference look-up), not the step
# tokens .. loss_mask: [B, seq_len]; pair_source_ids, pair_ids: [B, pairs_per_row] (-1 = empty slot)
PAIR_ROW_DTYPES = {"tokens": np.int32, "segment_ids": np.int32, "positions": np.int32,
                   "loss_mask": np.int32, "pair_source_ids": np.int32, "pair_ids": np.int64}
# pair_id = source_id << PAIR_ID_BITS (32) | record index: records < 2**32, ids fit int64


def pair_id(source_id: int, record: int) -> int:
  """The stable id of record `record` of source `source_id` (its index in the sorted sources)."""
  return (int(source_id) << PAIR_ID_BITS) | int(record)


def split_pair_ids(ids) -> tuple[np.ndarray, np.ndarray]:
  """(source ids, record indices) of pair ids (int64); -1 (an empty slot) gives (-1, -1)."""
  ids = np.asarray(ids, np.int64)
  empty = ids < 0
  return (np.where(empty, -1, ids >> PAIR_ID_BITS),
          np.where(empty, -1, ids & ((1 << PAIR_ID_BITS) - 1)))


def _ids(value, vocab: int) -> list[int] | str:
  if not isinstance(value, (list, tuple, np.ndarray)):
    return "missing_field" if value is None else "bad_ids"
  values = list(value)
  if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < vocab
             for v in values):
    return "bad_ids"
  return [int(v) for v in values]


def _text(value) -> str | None:
  return value if isinstance(value, str) else None


def _encodable(*texts: str) -> bool:
  try:
    for t in texts:
      t.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def tokenize_pair(record) -> tuple[list[int], list[int], list[int]] | str:
  """(prompt ids, chosen ids, rejected ids) of a pair record, or why it is skipped (before the
  length check)."""
  if not isinstance(record, dict):
    return "missing_field"
  tok = Phi4Tokenizer()
  if any(k in record for k in ("prompt_ids", "chosen_ids", "rejected_ids")):
    parts = [_ids(record.get(k), tok.vocab_size) for k in ("prompt_ids", "chosen_ids", "rejected_ids")]
    for reason in ("missing_field", "bad_ids"):
      if reason in parts:
        return reason
    prompt, chosen, rejected = parts
  else:
    chosen, rejected = _text(record.get("chosen")), _text(record.get("rejected"))
    conversation = "messages" in record
    prompt_text = None if conversation else _text(record.get("prompt"))
    if chosen is None or rejected is None or (not conversation and prompt_text is None):
      return "missing_field"
    if not _encodable(chosen, rejected, *([] if conversation else [prompt_text])):
      return "invalid_utf8"
    if conversation:
      try:
        messages = record["messages"]
        if not check_messages(messages):
          return "bad_messages"
      except ValueError:
        return "bad_messages"
      prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
      end = [tok.im_end_id]
      chosen, rejected = tok.encode_ordinary(chosen) + end, tok.encode_ordinary(rejected) + end
    else:
      prompt, chosen, rejected = map(tok.encode_ordinary, (prompt_text, chosen, rejected))
  if not prompt:
    return "empty_prompt"
  if not chosen or not rejected:
    return "empty_completion"
  if chosen == rejected:
    return "same_completion"
  return prompt, chosen, rejected


def pair_item(record, seq_len: int) -> Item | str:
  """The pair as packed: two sequences (prompt + chosen, prompt + rejected) with loss masks on
  the completions, or the reason it is skipped."""
  parts = tokenize_pair(record)
  if isinstance(parts, str):
    return parts
  prompt, chosen, rejected = parts
  if 2 * len(prompt) + len(chosen) + len(rejected) > seq_len:
    return "too_long"
  seqs = []
  for completion in (chosen, rejected):
    ids = np.asarray(prompt + completion, np.int32)
    mask = np.zeros(len(ids), np.int32)
    mask[len(prompt):] = 1
    seqs.append((ids, mask))
  return Item(tuple(seqs), None)

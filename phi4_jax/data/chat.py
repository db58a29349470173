"""SFT conversations: the ChatML template on token ids with an assistant-only loss mask.

A turn is `<|im_start|>{role}<|im_sep|>{content}<|im_end|>` (no newlines), built by
`Phi4Tokenizer.apply_chat_template([message], tokenize=True)` one message at a time, so the ids
here are exactly the tokenizer's template (content encoded as ordinary text: special-token text
inside a message stays text). `loss_mask` marks TARGET tokens (train/step.py weights the
prediction of token t+1 by loss_mask[t+1]): 1 on the content of assistant turns and on their
`<|im_end|>`, 0 on system and user turns, role names, `<|im_start|>` and `<|im_sep|>`.

A conversation longer than a row is cut at a turn boundary (the longest prefix of whole turns that
fits and ends with an assistant turn; `config.data.long_conversations="cut"`) or dropped
(`"drop"`); one without an assistant turn is never trained on. Both are counted per source.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from phi4_jax.data.fitpack import Item
from phi4_jax.tokenizer import Phi4Tokenizer

ROLES = ("system", "user", "assistant")
LONG_CONVERSATIONS = ("cut", "drop")


@functools.cache
def _header_len(role: str) -> int:
  """Tokens before a turn's content: <|im_start|>, the role's ids, <|im_sep|>."""
  empty = Phi4Tokenizer().apply_chat_template([{"role": role, "content": ""}], tokenize=True)
  return len(empty) - 1  # (the last one is <|im_end|>)


def check_messages(messages) -> list[tuple[str, str]]:
  """[(role, content)] of a conversation; ValueError naming the message index and field."""
  if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
    raise ValueError(f"messages must be a list of {{role, content}} mappings, got "
                     f"{type(messages).__name__}")
  turns = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping):
      raise ValueError(f"messages[{i}] must be a mapping with 'role' and 'content', got "
                       f"{type(m).__name__}")
    for field in ("role", "content"):
      if field not in m or m[field] is None:
        raise ValueError(f"messages[{i}] is missing {field!r}")
      if not isinstance(m[field], str):
        raise ValueError(f"messages[{i}][{field!r}] must be a str, got {type(m[field]).__name__}")
    if m["role"] not in ROLES:
      raise ValueError(f"messages[{i}]['role'] is {m['role']!r}, not one of {', '.join(ROLES)}")
    try:
      m["content"].encode("utf-8")
    except UnicodeEncodeError:
      raise ValueError(f"messages[{i}]['content'] holds a lone surrogate (no UTF-8 form)") from None
    turns.append((m["role"], m["content"]))
  return turns


def _turns(messages) -> list[tuple[str, list[int]]]:
  """(role, template ids of that turn) per message, after checking the messages."""
  tok = Phi4Tokenizer()
  return [(role, tok.apply_chat_template([{"role": role, "content": content}], tokenize=True))
          for role, content in check_messages(messages)]


def _mask(role: str, n: int) -> list[int]:
  if role != "assistant":
    return [0] * n
  return [0] * _header_len(role) + [1] * (n - _header_len(role))  # content + <|im_end|>


def tokenize_conversation(messages) -> tuple[np.ndarray, np.ndarray]:
  """(ids, loss_mask), int32 [n]: the template's ids (== apply_chat_template(messages,
  tokenize=True)) and 1 on assistant content and assistant <|im_end|>. Raises ValueError naming
  the message index and field for a message without a str role or content, or an unknown role."""
  turns = _turns(messages)
  ids = np.fromiter(itertools.chain.from_iterable(t for _, t in turns), np.int32)
  mask = np.fromiter(itertools.chain.from_iterable(_mask(r, len(t)) for r, t in turns), np.int32)
  return ids, mask


class Conversation(NamedTuple):
  """A conversation as trained on: ids, loss_mask (int32 [n]) and whether turns were cut off."""
  ids: np.ndarray
  loss_mask: np.ndarray
  cut: bool


def conversation_item(messages, seq_len: int, long_conversations: str = "cut") -> Conversation | str:
  """The conversation to train on, or the reason it is skipped: bad_messages (see
  check_messages), no_assistant (no assistant turn, after cutting too), too_long (over seq_len,
  and either long_conversations="drop" or no prefix of whole turns ending with an assistant turn
  fits). With "cut", a conversation over seq_len keeps the longest prefix of whole turns that fits
  and ends with an assistant turn (Conversation.cut is True)."""
  try:
    turns = _turns(messages)
  except ValueError:
    return "bad_messages"
  if not any(role == "assistant" for role, _ in turns):
    return "no_assistant"
  ends = np.cumsum([len(t) for _, t in turns])
  keep = len(turns)
  if ends[-1] > seq_len:
    if long_conversations != "cut":
      return "too_long"
    fits = [k + 1 for k, (role, _) in enumerate(turns) if role == "assistant" and ends[k] <= seq_len]
    if not fits:
      return "too_long"
    keep = fits[-1]
  ids = np.fromiter(itertools.chain.from_iterable(t for _, t in turns[:keep]), np.int32)
  mask = np.fromiter(itertools.chain.from_iterable(_mask(r, len(t)) for r, t in turns[:keep]),
                     np.int32)
  return Conversation(ids, mask, keep < len(turns))


def chat_item(messages, seq_len: int, long_conversations: str = "cut") -> Item | str:
  """conversation_item as a packer item (fitpack.Item: one sequence; note "cut_long" when turns
  were cut off), or the reason it is skipped."""
  c = conversation_item(messages, seq_len, long_conversations)
  if isinstance(c, str):
    return c
  return Item(((c.ids, c.loss_mask),), "cut_long" if c.cut else None)

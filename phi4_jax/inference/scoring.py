"""`logprobs`: log p(completion token | prompt + completion so far), teacher-forced and packed.

Several (prompt + completion) sequences share a row as segments (segment ids keep them apart,
positions restart per sequence), rows are padded to power-of-two lengths and counts. The output
layer runs only at the positions that predict a completion token (gathered, padded to a power of
two), a chunk at a time, so prompt tokens cost no logits and no [rows, length, vocab] array exists.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from phi4_jax import model as model_lib
from phi4_jax.inference.batching import bucket, check_prompts, note_compile
from phi4_jax.model import ModelConfig
from phi4_jax.model.output import shift_left, target_logprobs, target_scores

MIN_ROW_BUCKET = 32
MIN_PICK_BUCKET = 128  # scored positions per call are padded to a power of two from here
ROW_TOKENS = 8192  # tokens per forward call (rows x row length): bounds activation memory
LOGIT_CHUNK = 128  # sequence positions per output-layer chunk (logits: ROW_TOKENS x this x vocab)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "with_greedy"))
def _score_rows(params, tokens_BxT, segment_ids_BxT, positions_BxT, picks_N, *, cfg, mesh, with_greedy):
  """[N] log-prob of the next token after each picked flat position (row * T + t scores token t+1
  of the row); with_greedy: and [N] whether that token is the most likely one."""
  note_compile("logprobs")
  hidden_BxTxD = model_lib.forward(params, tokens_BxT, cfg, segment_ids=segment_ids_BxT,
                                   positions=positions_BxT, mesh=mesh, return_hidden=True)
  targets_BxT = shift_left(tokens_BxT, 0)
  hidden_1xNxD = hidden_BxTxD.reshape(-1, hidden_BxTxD.shape[-1])[picks_N][None]
  targets_1xN = targets_BxT.reshape(-1)[picks_N][None]
  score = target_scores if with_greedy else target_logprobs
  scores = score(hidden_1xNxD, params["lm_head"]["kernel"], targets_1xN, jnp.dtype(cfg.dtype), LOGIT_CHUNK)
  return jax.tree.map(lambda x: x[0], scores)


def pack(lengths: list[int], row_len: int) -> list[list[int]]:
  """Sequence indices per row, first-fit by decreasing length (every length <= row_len)."""
  rows: list[list[int]] = []
  free: list[int] = []
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    for r, space in enumerate(free):
      if lengths[i] <= space:
        rows[r].append(i)
        free[r] -= lengths[i]
        break
    else:
      rows.append([i])
      free.append(row_len - lengths[i])
  return rows


def _row_arrays(seqs: list[np.ndarray], rows: list[list[int]], row_len: int, n_rows: int):
  """tokens, segment ids (1, 2, ... per sequence; 0 = padding), positions and each sequence's
  (row, offset)."""
  tokens = np.zeros((n_rows, row_len), np.int32)
  segments = np.zeros((n_rows, row_len), np.int32)
  positions = np.zeros((n_rows, row_len), np.int32)
  where = {}
  for r, members in enumerate(rows):
    offset = 0
    for k, i in enumerate(members):
      n = len(seqs[i])
      tokens[r, offset:offset + n] = seqs[i]
      segments[r, offset:offset + n] = k + 1
      positions[r, offset:offset + n] = np.arange(n)
      where[i] = (r, offset)
      offset += n
  return tokens, segments, positions, where


def logprobs(params: dict, cfg: ModelConfig, prompts, completions, *, mesh: Mesh | None = None,
             with_greedy: bool = False) -> list:
  """One float32 array per (prompt, completion) pair: the log-prob of each completion token.
  with_greedy: (that array, a bool array: each token is the model's most likely one) per pair."""
  prompts = check_prompts(prompts, cfg, what="prompts")
  if isinstance(completions, (str, bytes)) or len(completions) != len(prompts):
    raise ValueError(f"completions: expected one token-id list per prompt ({len(prompts)}), got "
                     f"{len(completions) if hasattr(completions, '__len__') else completions!r}")
  completions = [np.asarray(c, np.int32).reshape(-1) for c in completions]
  seqs = [np.concatenate([p, c]) for p, c in zip(prompts, completions)]
  check_prompts(seqs, cfg, what="prompts[i] + completions[i]")
  if mesh is not None:
    params = model_lib.shard_params(params, cfg, mesh)
  row_len = min(bucket(max(len(s) for s in seqs), MIN_ROW_BUCKET), cfg.max_seq_len)
  rows = pack([len(s) for s in seqs], row_len)
  per_call = max(1, ROW_TOKENS // row_len)
  out: list[np.ndarray] = [None] * len(seqs)  # type: ignore[list-item]
  for start in range(0, len(rows), per_call):
    chunk = rows[start:start + per_call]
    tokens, segments, positions, where = _row_arrays(seqs, chunk, row_len, bucket(len(chunk)))
    # position offset + len(prompt) - 1 of a row predicts the first completion token
    spans = {i: (r * row_len + offset + len(prompts[i]) - 1, len(completions[i])) for i, (r, offset) in where.items()}
    picks = np.concatenate([np.arange(first, first + n) for first, n in spans.values()])
    padded = np.zeros(bucket(len(picks), MIN_PICK_BUCKET), np.int32)
    padded[:len(picks)] = picks
    scores = _score_rows(params, tokens, segments, positions, padded, cfg=cfg, mesh=mesh, with_greedy=with_greedy)
    scores, greedy = (np.asarray(scores[0]), np.asarray(scores[1])) if with_greedy else (np.asarray(scores), None)
    start_of = np.cumsum([0] + [n for _, n in spans.values()])
    for (i, (_, n)), begin in zip(spans.items(), start_of):
      lp = scores[begin:begin + n].astype(np.float32)
      out[i] = (lp, greedy[begin:begin + n]) if with_greedy else lp
  return out

"""Prompt log-probs for `echo` with `logprobs`: each prompt token's log-prob after the tokens
before it, with the top alternatives at that position (lm-eval's `local-completions` reads
log-likelihoods this way).

One teacher-forced forward of the (stacked) model over the prompt, right-padded to a power of two
(padding is its own segment), then the output layer a chunk of positions at a time: the
log-softmax of each chunk's logits gives the target's log-prob and the top k, from the same
array, so a token that is the argmax has exactly the top alternative's value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from phi4_jax import model as model_lib
from phi4_jax.inference import batching
from phi4_jax.model import ModelConfig
from phi4_jax.model.output import chunk_logits
from phi4_jax.serve.choose import TOP_LOGPROBS

MIN_LENGTH = 32
CHUNK = 128  # positions per output-layer chunk


@functools.partial(jax.jit, static_argnames=("cfg", "k", "mesh"))
def _score(params, tokens_1xT, segments_1xT, *, cfg, k, mesh):
  batching.note_compile("serve_prompt_logprobs")
  hidden_TxD = model_lib.forward(params, tokens_1xT, cfg, segment_ids=segments_1xT, mesh=mesh,
                                 return_hidden=True)[0]
  t = hidden_TxD.shape[0]
  targets_T = jnp.concatenate([tokens_1xT[0, 1:], jnp.zeros((1,), jnp.int32)])
  c = min(CHUNK, t)

  def one_chunk(xs):
    h_CxD, y_C = xs
    logp_CxV = jax.nn.log_softmax(chunk_logits(h_CxD[None], params["lm_head"]["kernel"],
                                               jnp.dtype(cfg.dtype))[0], axis=-1)
    top_CxK, ids_CxK = jax.lax.top_k(logp_CxV, k)
    return jnp.take_along_axis(logp_CxV, y_C[:, None], axis=1)[:, 0], top_CxK, ids_CxK.astype(jnp.int32)

  out = jax.lax.map(one_chunk, (hidden_TxD.reshape(t // c, c, -1), targets_T.reshape(t // c, c)))
  return jax.tree.map(lambda a: a.reshape(t, *a.shape[2:]), out)


def prompt_logprobs(params: dict, cfg: ModelConfig, ids, k: int, mesh=None):
  """(log-prob [T-1] of tokens 1.., top-k log-probs [T-1, k], their ids [T-1, k]) of one prompt."""
  ids = np.asarray(ids, np.int32)
  t = batching.bucket(len(ids), MIN_LENGTH)
  tokens, segments = np.zeros((1, t), np.int32), np.zeros((1, t), np.int32)
  tokens[0, :len(ids)], segments[0, :len(ids)] = ids, 1
  lp, top, top_ids = _score(params, tokens, segments, cfg=cfg, k=TOP_LOGPROBS, mesh=mesh)  # (k <= 20)
  n = len(ids) - 1
  return np.asarray(lp[:n]), np.asarray(top[:n, :k]), np.asarray(top_ids[:n, :k])

"""Phi3ForCausalLM tensors <-> phi4_jax params: which HF tensor holds which of our parameters.

HF keeps q/k/v fused in `qkv_proj` (rows q, then k, then v, head-major) and gate/up fused in
`gate_up_proj` (gate rows first), one tensor per layer; our parameters are split and stacked on a
leading layers axis. Parameters are addressed by flat paths such as "layers/attn/q/kernel"
(flax.traverse_util.flatten_dict(params, sep="/")). The embedding-sized tensors are converted in
row blocks of about BLOCK_BYTES in both directions, so neither needs a whole copy in memory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
from flax import traverse_util

from phi4_jax.model import ModelConfig, abstract_params

# Row-block (and orbax chunk) size for the embedding-sized tensors. Small, because glibc keeps
# freed blocks under 32 MB in per-thread arenas: retained memory grows with the block size.
BLOCK_BYTES = 4 * 2**20

Getter = Callable[[str, "int | None"], np.ndarray]  # (our param path, layer or None) -> values
Reader = Callable[[str, tuple], np.ndarray]  # (our param path, index into it) -> those values


@dataclasses.dataclass(frozen=True)
class Piece:
  """Where (part of) an HF tensor lands in our params.

  take maps the HF tensor to the values of `path` (at `layer` for stacked leaves). For unstacked
  leaves, rows_axis is our axis that the HF tensor's first axis maps to, so a row block of the HF
  tensor can be converted and written on its own.
  """

  path: str
  layer: int | None
  take: Callable[[np.ndarray], np.ndarray]
  rows_axis: int | None = None

  def index(self, start: int, stop: int) -> tuple:
    """Where rows [start, stop) of the HF tensor lie in our leaf: the layer, or that row block."""
    if self.layer is not None:
      return (self.layer,)
    return (slice(None),) * self.rows_axis + (slice(start, stop),)


@dataclasses.dataclass(frozen=True)
class HfTensor:
  """One HF tensor: its name and shape, the pieces it splits into and how to rebuild it."""

  name: str
  shape: tuple[int, ...]
  pieces: tuple[Piece, ...]
  build: Callable[[Getter], np.ndarray]


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Our parameter shapes by flat path, from model.abstract_params (nothing allocated)."""
  flat = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
  return {path: tuple(x.shape) for path, x in flat.items()}


def _layer_tensors(cfg: ModelConfig, i: int) -> list[HfTensor]:
  D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  q, kv = H * Dh, K * Dh
  pre = f"model.layers.{i}."
  qkv_paths = ("layers/attn/q/kernel", "layers/attn/k/kernel", "layers/attn/v/kernel")
  return [
      HfTensor(pre + "input_layernorm.weight", (D,),
               (Piece("layers/attn_norm/scale", i, lambda w: w),),
               lambda get: get("layers/attn_norm/scale", i)),
      HfTensor(pre + "self_attn.qkv_proj.weight", (q + 2 * kv, D), (
          Piece(qkv_paths[0], i, lambda w: w[:q].T.reshape(D, H, Dh)),
          Piece(qkv_paths[1], i, lambda w: w[q:q + kv].T.reshape(D, K, Dh)),
          Piece(qkv_paths[2], i, lambda w: w[q + kv:].T.reshape(D, K, Dh))),
               lambda get: np.concatenate([get(p, i).reshape(D, -1).T for p in qkv_paths])),
      HfTensor(pre + "self_attn.o_proj.weight", (D, q),
               (Piece("layers/attn/o/kernel", i, lambda w: w.T.reshape(H, Dh, D)),),
               lambda get: get("layers/attn/o/kernel", i).reshape(q, D).T),
      HfTensor(pre + "post_attention_layernorm.weight", (D,),
               (Piece("layers/mlp_norm/scale", i, lambda w: w),),
               lambda get: get("layers/mlp_norm/scale", i)),
      HfTensor(pre + "mlp.gate_up_proj.weight", (2 * F, D), (
          Piece("layers/mlp/gate/kernel", i, lambda w: w[:F].T),
          Piece("layers/mlp/up/kernel", i, lambda w: w[F:].T)),
               lambda get: np.concatenate([get("layers/mlp/gate/kernel", i).T,
                                           get("layers/mlp/up/kernel", i).T])),
      HfTensor(pre + "mlp.down_proj.weight", (D, F),
               (Piece("layers/mlp/down/kernel", i, lambda w: w.T),),
               lambda get: get("layers/mlp/down/kernel", i).T),
  ]


def hf_tensors(cfg: ModelConfig) -> list[HfTensor]:
  """Every tensor of the HF checkpoint, in file order: embeddings, layers, final norm, lm_head."""
  V, D = cfg.vocab_size, cfg.d_model
  tensors = [HfTensor("model.embed_tokens.weight", (V, D),
                      (Piece("embed/embedding", None, lambda w: w, rows_axis=0),),
                      lambda get: get("embed/embedding", None))]
  for i in range(cfg.n_layers):
    tensors += _layer_tensors(cfg, i)
  tensors += [HfTensor("model.norm.weight", (D,),
                       (Piece("final_norm/scale", None, lambda w: w, rows_axis=0),),
                       lambda get: get("final_norm/scale", None)),
              HfTensor("lm_head.weight", (V, D),
                       (Piece("lm_head/kernel", None, lambda w: w.T, rows_axis=1),),
                       lambda get: get("lm_head/kernel", None).T)]
  return tensors


def block_rows(t: HfTensor) -> int:
  """Rows of HF tensor `t` converted at once: all for layer tensors, else about BLOCK_BYTES."""
  if any(p.rows_axis is None for p in t.pieces):
    return t.shape[0]
  row_bytes = math.prod(t.shape[1:]) * 4  # sized for fp32 so chunks do not depend on the dtype
  return max(1, min(t.shape[0], BLOCK_BYTES // row_bytes))


def row_blocks(t: HfTensor) -> Iterator[tuple[int, int]]:
  """(start, stop) of each row block of `t`, in order."""
  rows = block_rows(t)
  for start in range(0, t.shape[0], rows):
    yield start, min(start + rows, t.shape[0])


def built_blocks(t: HfTensor, read: Reader) -> Iterator[np.ndarray]:
  """The row blocks of HF tensor `t`, each built from the parts of our params that `read` returns.

  An unstacked leaf's rows_axis maps one-to-one onto the HF rows, so building from the block of
  the leaf alone gives that block of the tensor.
  """
  pieces = {p.path: p for p in t.pieces}
  for start, stop in row_blocks(t):
    yield t.build(lambda path, layer: read(path, pieces[path].index(start, stop)))

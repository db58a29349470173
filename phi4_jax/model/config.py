"""Model configuration: the Phi-3/Phi-4 decoder shape, its presets and FLOP count."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# Logical axis -> mesh axes. Parameters and activations are annotated with the
# logical names on the left; a run maps them onto its Mesh(data, fsdp, tensor).
DEFAULT_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
)

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blocked")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Phi-3-architecture decoder (defaults: phi-4 14B)."""

  vocab_size: int = 100_352  # cl100k_base 100,256 + specials, padded
  d_model: int = 5120  # residual stream width
  n_layers: int = 40  # decoder blocks
  n_heads: int = 40  # query heads
  n_kv_heads: int = 10  # key/value heads (GQA: query head h uses kv head h // (n_heads // n_kv_heads))
  head_dim: int = 128  # per-head width
  d_ff: int = 17_920  # SwiGLU hidden width
  rope_theta: float = 250_000.0  # RoPE base (released phi-4; pretraining value unpublished)
  norm_eps: float = 1e-5  # RMSNorm epsilon
  max_seq_len: int = 16_384  # longest position the model is configured for
  param_dtype: str = "float32"  # storage dtype of parameters
  dtype: str = "float32"  # compute dtype of activations and matmuls
  scan_layers: bool = True  # compile one block and lax.scan it (False unrolls; params identical)
  remat_policy: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  attention_impl: str = "auto"  # xla | cudnn | blocked | auto: cuDNN on GPU in 16-bit, blocked on CPU, else xla
  attention_block: int = 128  # query rows per block of the blocked attention (model/attention.py)
  init_std: float = 0.02  # std of the normal initializer of every weight matrix
  axis_rules: tuple[tuple[str, Any], ...] = DEFAULT_AXIS_RULES  # logical -> mesh axes

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the offending field."""
    positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "max_seq_len", "attention_block")
    for name in positive:
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"ModelConfig.n_heads ({self.n_heads}) must be a multiple of "
                       f"ModelConfig.n_kv_heads ({self.n_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
    if self.rope_theta <= 0:
      raise ValueError(f"ModelConfig.rope_theta must be positive, got {self.rope_theta}")
    for name, allowed in (("param_dtype", DTYPES), ("dtype", DTYPES),
                          ("remat_policy", REMAT_POLICIES), ("attention_impl", ATTENTION_IMPLS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

  @classmethod
  def preset(cls, name: str, **overrides) -> "ModelConfig":
    """A named preset ("phi4_14b", "1b", "colab", "test") with optional field overrides."""
    if name not in PRESETS:
      raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)

  def replace(self, **overrides) -> "ModelConfig":
    return dataclasses.replace(self, **overrides)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["axis_rules"] = [list(r) for r in self.axis_rules]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {unknown}")
    d = dict(d)
    if "axis_rules" in d:
      d["axis_rules"] = tuple(
          (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in d["axis_rules"])
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)


PRESETS: dict[str, ModelConfig] = {
    # The released microsoft/phi-4 shapes; bf16 compute, fp32 master params.
    "phi4_14b": ModelConfig(dtype="bfloat16", remat_policy="dots_with_no_batch_dims_saveable"),
    # ~1.5B (1.1B besides the embedding tables) for single-host GPU/TPU runs; same ratios
    # (GQA 4:1, d_ff = 3.5 d_model).
    "1b": ModelConfig(d_model=2048, n_layers=20, n_heads=16, n_kv_heads=4, head_dim=128, d_ff=7168,
                      max_seq_len=4096, dtype="bfloat16", remat_policy="dots_with_no_batch_dims_saveable"),
    # Trains on a laptop CPU in minutes; full vocabulary so the real tokenizer applies.
    "colab": ModelConfig(d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32, d_ff=896,
                         max_seq_len=1024),
    # Tiny, for tests; full vocabulary so the real tokenizer applies.
    "test": ModelConfig(d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, head_dim=8, d_ff=224,
                        max_seq_len=512),
}


def param_count(cfg: ModelConfig) -> int:
  """Parameters from the shapes alone (see model.init under jax.eval_shape for the checked count)."""
  attn = cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
  mlp = 3 * cfg.d_model * cfg.d_ff
  per_layer = attn + mlp + 2 * cfg.d_model
  return cfg.n_layers * per_layer + 2 * cfg.vocab_size * cfg.d_model + cfg.d_model


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 x (matmul params) + causal attention scores and values.

  Matmul params exclude the embedding lookup (a gather) and norms but include lm_head. Attention
  (QK^T and AV, forward and backward) adds 12 x n_layers x n_heads x head_dim x seq_len, halved
  because a causal query attends on average to half the keys.
  """
  matmul_params = param_count(cfg) - cfg.vocab_size * cfg.d_model - (2 * cfg.n_layers + 1) * cfg.d_model
  attention = 6 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
  return 6.0 * matmul_params + attention

"""Model configuration: the Phi-3/Phi-4 decoder shape, its presets and FLOP count."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_collections

from phi4_jax import fields

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
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blocked", "tpu_flash")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Phi-3-architecture decoder (defaults: phi-4 14B)."""

  vocab_size: int = fields.attribute(100_352, fields.integer(1), "cl100k_base 100,256 + specials, padded")
  d_model: int = fields.attribute(5120, fields.integer(1), "residual stream width")
  n_layers: int = fields.attribute(40, fields.integer(1), "decoder blocks")
  n_heads: int = fields.attribute(40, fields.integer(1), "query heads")
  n_kv_heads: int = fields.attribute(
      10, fields.integer(1), "key/value heads (GQA: query head h uses kv head h // (n_heads // n_kv_heads))")
  head_dim: int = fields.attribute(128, fields.integer(1), "per-head width")
  d_ff: int = fields.attribute(17_920, fields.integer(1), "SwiGLU hidden width")
  rope_theta: float = fields.attribute(250_000.0, fields.number(0, low_open=True),
                                       "RoPE base (released phi-4; pretraining value unpublished)")
  norm_eps: float = fields.attribute(1e-5, fields.number(0, low_open=True), "RMSNorm epsilon")
  max_seq_len: int = fields.attribute(
      16_384, fields.integer(1), "longest position the model is configured for")
  param_dtype: str = fields.attribute("float32", fields.choice(DTYPES), "storage dtype of parameters")
  dtype: str = fields.attribute("float32", fields.choice(DTYPES), "compute dtype of activations and matmuls")
  scan_layers: bool = fields.attribute(
      True, fields.boolean(), "compile one block and lax.scan it (False unrolls; params identical)")
  remat_policy: str = fields.attribute(
      "none", fields.choice(REMAT_POLICIES), "none | full | dots_saveable | dots_with_no_batch_dims_saveable")
  attention_impl: str = fields.attribute(
      "auto", fields.choice(ATTENTION_IMPLS),
      "xla | cudnn | blocked | tpu_flash | auto: cuDNN on GPU in 16-bit, tpu_flash on TPU, else blocked")
  attention_block: int = fields.attribute(
      128, fields.integer(1), "query rows per block of the blocked attention (model/attention.py)")
  init_std: float = fields.attribute(
      0.02, fields.number(0), "std of the normal initializer of every weight matrix")
  axis_rules: tuple[tuple[str, Any], ...] = fields.attribute(
      DEFAULT_AXIS_RULES, None, "logical -> mesh axes, as (logical name, None | mesh axis | mesh axes) pairs")

  def __post_init__(self):
    values = _checked(_values(self), "ModelConfig")
    object.__setattr__(self, "axis_rules", values["axis_rules"])  # lists -> tuples (hashable)

  def validate(self, where: str = "ModelConfig") -> None:
    """Raises ValueError naming the offending field as `<where>.<field>`."""
    _checked(_values(self), where)

  @classmethod
  def preset(cls, name: str, **overrides) -> "ModelConfig":
    """A named preset ("phi4_14b", "1b", "colab", "test") with optional field overrides."""
    if name not in PRESETS:
      raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)

  def replace(self, **overrides) -> "ModelConfig":
    return dataclasses.replace(self, **overrides)

  def to_config_dict(self) -> ml_collections.ConfigDict:
    """Every field, as a stage config's `model`: `--config.model.<field>=v` sets any of them
    (axis_rules whole, e.g. --config.model.axis_rules="(('embed', None), ('mlp', 'tensor'))")."""
    return ml_collections.ConfigDict(_values(self))

  @classmethod
  def from_config_dict(cls, model: ml_collections.ConfigDict) -> "ModelConfig":
    """A stage config's `model` back to a ModelConfig; errors name `config.model.<field>`."""
    return cls.from_dict(model.to_dict(), where="config.model")

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields (axis_rules as lists)."""
    return json.loads(json.dumps(_values(self)))

  @classmethod
  def from_dict(cls, d: dict[str, Any], where: str = "ModelConfig") -> "ModelConfig":
    """Fields (a subset; the rest keep their defaults) -> ModelConfig; errors name `<where>.<field>`."""
    fields.unknown(d, MODEL.fields, where)
    values = {f.name: f.default for f in dataclasses.fields(cls)}
    values.update(d)
    return cls(**_checked(values, where))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)


def _values(cfg: ModelConfig) -> dict[str, Any]:
  return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _checked(values: dict[str, Any], where: str) -> dict[str, Any]:
  """values with axis_rules normalised; raises ValueError naming `<where>.<field>` (MODEL's rules,
  then the ones relating two fields)."""
  MODEL.check(values, where)
  if values["n_heads"] % values["n_kv_heads"]:
    raise ValueError(f"{where}.n_heads: must be a multiple of {where}.n_kv_heads={values['n_kv_heads']}, "
                     f"got {values['n_heads']}")
  if values["head_dim"] % 2:
    raise ValueError(f"{where}.head_dim: must be even for RoPE, got {values['head_dim']}")
  return {**values, "axis_rules": _axis_rules(values["axis_rules"], f"{where}.axis_rules")}


def _axis_rules(rules: Any, where: str) -> tuple[tuple[str, Any], ...]:
  """(logical name, mesh axes) pairs, lists made tuples; mesh axes are None, a name or names."""
  example = "pairs like ('embed', 'fsdp'), ('activation_batch', ('data', 'fsdp')), ('layers', None)"
  if isinstance(rules, (str, bytes)) or not isinstance(rules, (list, tuple)):
    raise ValueError(f"{where} must be a tuple of {example}; got {rules!r}")
  out = []
  for rule in rules:
    if not isinstance(rule, (list, tuple)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"{where}: {rule!r} is not a (logical name, mesh axes) pair; use {example}")
    name, axes = rule
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    if not (axes is None or isinstance(axes, str)
            or isinstance(axes, tuple) and all(isinstance(a, str) for a in axes)):
      raise ValueError(f"{where}: rule {name!r} maps to {axes!r}; mesh axes are None, a mesh axis "
                       "name or a tuple of names")
    out.append((name, axes))
  names = [name for name, _ in out]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"{where}: logical axes {repeated} have more than one rule")
  return tuple(out)


MODEL = fields.Group.of_dataclass(ModelConfig)

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

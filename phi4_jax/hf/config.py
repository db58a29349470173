"""config.json of a Hugging Face Phi3ForCausalLM <-> ModelConfig."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from phi4_jax.model import ModelConfig
from phi4_jax.model.config import DTYPES
from phi4_jax.tokenizer import Phi4Tokenizer

CONFIG_FILE = "config.json"
# The ids phi-4's config.json declares, when the vocabulary is phi-4's (the tokenizer's).
PHI4_TOKEN_IDS = {"bos_token_id": Phi4Tokenizer.bos_id, "eos_token_id": Phi4Tokenizer.eos_id,
                  "pad_token_id": Phi4Tokenizer.pad_id}


def _refuse(field: str, value, why: str):
  raise ValueError(f"{field}={value!r} is not supported: {why}")


# Fields by which transformers (quantization_config) and older compressed-tensors
# (compression_config) mark a quantized checkpoint, and AutoGPTQ's separate file.
QUANTIZATION_FIELDS = ("quantization_config", "compression_config")
GPTQ_FILE = "quantize_config.json"


def _check_not_quantized(config: Mapping) -> None:
  for field in QUANTIZATION_FIELDS:
    if config.get(field):
      spec = config[field]
      method = (spec.get("quant_method") or spec.get("format") or "unknown") if isinstance(
          spec, Mapping) else spec
      raise ValueError(f"{field} declares a quantized checkpoint (quant_method {method!r}); only "
                       "unquantized F32/F16/BF16 weights import: dequantize first (in transformers, "
                       "model.dequantize() then save_pretrained)")


def _check_supported(config: Mapping) -> None:
  """Refuses, naming the field, what our decoder cannot express."""
  _check_not_quantized(config)
  if config.get("architectures", ["Phi3ForCausalLM"]) != ["Phi3ForCausalLM"]:
    _refuse("architectures", config["architectures"], "expected ['Phi3ForCausalLM']")
  if config.get("model_type") != "phi3":
    _refuse("model_type", config.get("model_type"), "expected 'phi3'")
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "max_position_embeddings")
  missing = [field for field in required if field not in config]
  if missing:
    raise ValueError(f"missing fields {missing}")
  rope = config.get("rope_parameters") or {}
  scaling = config.get("rope_scaling") or {}
  if scaling.get("rope_type", scaling.get("type", "default")) != "default":
    _refuse("rope_scaling", scaling, "only plain RoPE (rope_scaling null) is implemented")
  if rope.get("rope_type", "default") != "default":
    _refuse("rope_parameters.rope_type", rope["rope_type"], "only 'default' RoPE is implemented")
  partials = {"partial_rotary_factor": config.get("partial_rotary_factor", 1.0),
              "rope_parameters.partial_rotary_factor": rope.get("partial_rotary_factor", 1.0)}
  for field, partial in partials.items():
    if partial != 1.0:
      _refuse(field, partial, "only full rotary embeddings (1.0) are implemented")
  max_pos = config["max_position_embeddings"]
  if config.get("sliding_window") is not None and config["sliding_window"] < max_pos:
    _refuse("sliding_window", config["sliding_window"], "attention is full causal; the window must "
            f"be null or >= max_position_embeddings ({max_pos})")
  if config.get("tie_word_embeddings", False):
    _refuse("tie_word_embeddings", True, "embed_tokens and lm_head are separate parameters")
  if config.get("hidden_act", "silu") != "silu":
    _refuse("hidden_act", config["hidden_act"], "the MLP is SwiGLU")
  for field in ("attention_bias", "mlp_bias"):
    if config.get(field, False):
      _refuse(field, True, "the model has no biases")


def config_from_hf(config: Mapping) -> ModelConfig:
  """ModelConfig from a Phi3ForCausalLM config.json dict; refuses what our model cannot express."""
  _check_supported(config)
  rope = config.get("rope_parameters") or {}
  heads = config["num_attention_heads"]
  dtype = config.get("dtype", config.get("torch_dtype"))
  return ModelConfig(
      vocab_size=config["vocab_size"], d_model=config["hidden_size"],
      n_layers=config["num_hidden_layers"], n_heads=heads,
      n_kv_heads=config.get("num_key_value_heads") or heads,
      head_dim=config.get("head_dim") or config["hidden_size"] // heads,
      d_ff=config["intermediate_size"],
      rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))),
      norm_eps=float(config.get("rms_norm_eps", 1e-5)), max_seq_len=config["max_position_embeddings"],
      init_std=float(config.get("initializer_range", 0.02)),
      param_dtype=dtype if dtype in DTYPES else "float32")


def config_to_hf(cfg: ModelConfig, dtype: str | None = None) -> dict:
  """A Phi3ForCausalLM config.json dict (the released phi-4's format) for cfg.

  Token ids are phi-4's when the vocabulary is the tokenizer's, else None (HF builds its embedding
  with padding_idx=pad_token_id, so a pad id must lie inside the vocabulary).
  """
  phi4_vocab = cfg.vocab_size == Phi4Tokenizer.vocab_size
  config = {
      "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta, "rope_scaling": None, "partial_rotary_factor": 1.0,
      "max_position_embeddings": cfg.max_seq_len, "original_max_position_embeddings": cfg.max_seq_len,
      "sliding_window": None, "tie_word_embeddings": False, "attention_bias": False,
      "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
      "initializer_range": cfg.init_std, "use_cache": True, "torch_dtype": dtype or cfg.param_dtype,
      **(PHI4_TOKEN_IDS if phi4_vocab else dict.fromkeys(PHI4_TOKEN_IDS)),
  }
  if cfg.head_dim * cfg.n_heads != cfg.d_model:
    config["head_dim"] = cfg.head_dim
  return config


def read_config(hf_dir: str) -> ModelConfig:
  """ModelConfig of the HF folder hf_dir; errors name its config.json."""
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir}: no {CONFIG_FILE}; expected a Hugging Face "
                            "Phi3ForCausalLM folder")
  gptq = os.path.join(hf_dir, GPTQ_FILE)
  if os.path.exists(gptq):
    raise ValueError(f"{gptq}: an AutoGPTQ-quantized checkpoint; only unquantized F32/F16/BF16 "
                     "weights import: dequantize first")
  with open(path) as f:
    try:
      config = json.load(f)
    except ValueError as e:  # JSONDecodeError names the line and column
      raise ValueError(f"{path}: not valid JSON: {e}") from e
  if not isinstance(config, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
  try:
    return config_from_hf(config)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def write_config(out_dir: str, cfg: ModelConfig, dtype: str) -> None:
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config_to_hf(cfg, dtype), f, indent=2)

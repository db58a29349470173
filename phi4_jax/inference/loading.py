"""`load`: (cfg, params) from a stage's workdir or from a Hugging Face Phi3ForCausalLM folder."""

from __future__ import annotations

import os

import jax

from phi4_jax import hf
from phi4_jax.model import ModelConfig
from phi4_jax.store import workdir as workdir_lib


def is_hf_dir(path: str) -> bool:
  """A folder with HF safetensors weights (a workdir has model_config.json and checkpoints/)."""
  return any(os.path.exists(os.path.join(path, name))
             for name in ("model.safetensors", "model.safetensors.index.json"))


def load(path: str, step: int | None = None, shardings=None) -> tuple[ModelConfig, dict]:
  """(cfg, params) of a workdir's latest (or given) checkpoint, params only, or of an HF folder:
  jax arrays, on `shardings` or the default device (numpy params would be copied to the device
  again by every jitted prefill, decode and scoring call)."""
  path = workdir_lib.resolve(path, flag="path")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such directory (expected a workdir or an HF folder)")
  if is_hf_dir(path):
    if step is not None:
      raise ValueError(f"step={step}: {path} is a Hugging Face folder, which has no steps")
    cfg, params = hf.load(path)
  else:
    cfg, params = workdir_lib.restore_params(path, step, shardings)  # (on shardings, if given)
  return cfg, jax.device_put(params, shardings)

"""Pretraining (docs/RECIPE.md, "Pretraining"): Table 5's mixture at 4K context.

Presets (the arg): test (tiny, for tests), colab (a laptop CPU or one small GPU), 1b (a realistic
single-host GPU/TPU run), phi4_14b (the paper's run: 10T tokens). test, colab and 1b read the
embedded corpus (built offline on first use); phi4_14b reads $PHI4_DATA/<source>/*.parquet with
Table 5's unique tokens declared.

  python -m phi4_jax.main --config=experiments/pretrain.py:colab --workdir=W
  python -m phi4_jax.data.plan --config=experiments/pretrain.py:phi4_14b
"""

import ml_collections

from phi4_jax.data import config as data_config
from phi4_jax.model import ModelConfig
from phi4_jax.train.config import base_config, optimizer_fields

# Table 5: source -> (fraction of training tokens, unique tokens). Data, not code.
TABLE5 = {
    "web": (0.15, 1.3e12),
    "web_rewrites": (0.15, 290e9),
    "synthetic": (0.40, 290e9),
    "code": (0.20, 820e9),
    "acquired": (0.10, 580e9),
}
# Paper-scale guards, a little above Table 5's epochs (1.2, 5.2, 13.8, 2.4, 1.7).
MAX_EPOCHS_14B = {"web": 2, "web_rewrites": 8, "synthetic": 16, "code": 4, "acquired": 3}

# The pretraining RoPE base is unpublished; phi-3-medium used 10,000 and midtraining raises it to
# 250,000 (the released value).
PRETRAIN_ROPE_THETA = 10_000.0

# preset -> seq_len, global batch, steps, peak LR, warmup steps, mesh (data, fsdp, tensor), microbatches
PRESETS = {
    "test": dict(seq_len=512, global_batch_size=8, steps=256, peak_lr=1e-3, warmup=16,
                 mesh=(1, -1, 1), microbatches=1),  # 1.05M tokens
    "colab": dict(seq_len=256, global_batch_size=8, steps=48, peak_lr=3e-3, warmup=6,
                  mesh=(1, -1, 1), microbatches=1),  # 98K tokens: a laptop CPU
    "1b": dict(seq_len=4096, global_batch_size=256, steps=20_000, peak_lr=3e-4, warmup=1_000,
               mesh=(1, -1, 1), microbatches=4),  # 21B tokens, one 8-GPU host
    "phi4_14b": dict(seq_len=4096, global_batch_size=5760, steps=423_856, peak_lr=3e-4, warmup=4_000,
                     mesh=(1, -1, 1), microbatches=1),  # 10.0T tokens, ~23.6M tokens per step
}


def table5_sources(paper_scale: bool) -> dict[str, ml_collections.ConfigDict]:
  """Table 5 as sources: the paper's files and counts, or the embedded corpus (measured)."""
  if paper_scale:
    return {name: data_config.source(f"$PHI4_DATA/{name}/*.parquet", fraction, unique_tokens=unique,
                                     max_epochs=MAX_EPOCHS_14B[name])
            for name, (fraction, unique) in TABLE5.items()}
  return {name: data_config.source(f"corpus:{name}", fraction)
          for name, (fraction, _) in TABLE5.items()}


def stage_config(arg: str, presets: dict, stage: str) -> ml_collections.ConfigDict:
  """The run fields of a stage preset (model and data are left to the stage file)."""
  if arg not in presets:
    raise ValueError(f"unknown preset {arg!r}; choose one of {sorted(presets)}")
  p = presets[arg]
  config = base_config()
  config.stage = stage
  config.seq_len, config.global_batch_size, config.steps = p["seq_len"], p["global_batch_size"], p["steps"]
  config.mesh_shape, config.microbatches = p["mesh"], p["microbatches"]
  config.optimizer = optimizer_fields(peak_lr=p["peak_lr"], warmup_steps=p["warmup"])
  if arg in ("test", "colab"):
    config.log_every, config.checkpoint_every = 4, 20  # 4 divides every small preset's steps
  return config


def get_config(arg: str = "colab") -> ml_collections.ConfigDict:
  config = stage_config(arg, PRESETS, "pretrain")
  config.model = ModelConfig.preset(arg, rope_theta=PRETRAIN_ROPE_THETA).to_config_dict()
  config.data = data_config.data(table5_sources(paper_scale=arg == "phi4_14b"))
  return config

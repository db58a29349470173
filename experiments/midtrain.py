"""Midtraining (docs/RECIPE.md, "Midtraining"): context 4K -> 16K on 30% long documents + 70% pretraining replay.

RoPE base 250,000 and a peak LR a tenth of pretraining's. The long part keeps documents longer
than half a row (8K tokens at 16K) and up-weights those that fill a row (>= 16K): 10% and 20% of
the stage's tokens. The replay part is the pretraining mixture itself, nested as one source. test,
colab and 1b read the embedded corpus (its standard-library modules stand in for long documents;
the small presets scale the thresholds with seq_len); phi4_14b reads $PHI4_DATA/long/*.parquet,
measured on first use. The recipe (experiments/recipe.py) starts it from pretraining's params.

  python -m phi4_jax.data.plan --config=experiments/midtrain.py:colab
"""

import ml_collections

from experiments import pretrain
from phi4_jax.data import config as data_config
from phi4_jax.model import ModelConfig

LONG_FRACTION, LONG_FULL_ROW_SHARE = 0.30, 2 / 3  # long documents; of them, those filling a row
MIDTRAIN_ROPE_THETA = 250_000.0  # the released phi-4 value, set at midtraining
LR_RATIO = 0.1  # midtraining peak LR relative to pretraining's

# preset -> seq_len, global batch, steps, warmup steps, mesh (data, fsdp, tensor), microbatches
PRESETS = {
    "test": dict(seq_len=1024, global_batch_size=4, steps=64, warmup=4, mesh=(1, -1, 1),
                 microbatches=1),  # 262K tokens
    "colab": dict(seq_len=1024, global_batch_size=4, steps=12, warmup=2, mesh=(1, -1, 1),
                  microbatches=1),  # 49K tokens; batch 4 splits over up to 4 devices
    "1b": dict(seq_len=16_384, global_batch_size=64, steps=2_000, warmup=100, mesh=(1, -1, 1),
               microbatches=4),  # 2.1B tokens
    "phi4_14b": dict(seq_len=16_384, global_batch_size=1440, steps=10_597, warmup=200,
                     mesh=(1, -1, 1), microbatches=1),  # 250B tokens, ~23.6M tokens per step
}


def long_sources(globs: str, seq_len: int) -> dict[str, ml_collections.ConfigDict]:
  """Documents of [seq_len/2, seq_len) tokens, and of >= seq_len tokens (up-weighted)."""
  full = LONG_FRACTION * LONG_FULL_ROW_SHARE
  return {
      "long_half_row": data_config.source(globs, LONG_FRACTION - full, min_doc_tokens=seq_len // 2,
                                          max_doc_tokens=seq_len - 1),
      "long_full_row": data_config.source(globs, full, min_doc_tokens=seq_len),
  }


def get_config(arg: str = "colab") -> ml_collections.ConfigDict:
  presets = {name: {**p, "peak_lr": pretrain.PRESETS[name]["peak_lr"] * LR_RATIO}
             for name, p in PRESETS.items()}
  config = pretrain.stage_config(arg, presets, "midtrain")
  # At 16K the saved matmul outputs of dots_with_no_batch_dims_saveable alone outgrow an 80 GB
  # device (--dry_run's plan, benchmarks/README.md); full remat recomputes them.
  remat = {"remat_policy": "full"} if arg in ("1b", "phi4_14b") else {}
  config.model = ModelConfig.preset(arg, rope_theta=MIDTRAIN_ROPE_THETA,
                                    max_seq_len=max(config.seq_len, 16_384), **remat).to_config_dict()
  paper_scale = arg == "phi4_14b"
  long_globs = "$PHI4_DATA/long/*.parquet" if paper_scale else "corpus:long,corpus:code"
  config.data = data_config.data({
      **long_sources(long_globs, config.seq_len),
      "replay": data_config.mixture(1.0 - LONG_FRACTION, pretrain.table5_sources(paper_scale)),
  })
  return config

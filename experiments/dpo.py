"""Direct preference optimization (docs/RECIPE.md, "Post-training"), starting from SFT's params,
which are also the frozen reference.

Phi-4 runs two DPO stages that differ in data: stage 1 on Pivotal Token Search pairs, stage 2 on
judge-guided pairs. Presets: <size> is stage 1 and <size>_judge stage 2 (test, colab, 1b,
phi4_14b). phi4_14b reads $PHI4_DATA/dpo_pts/*.jsonl or $PHI4_DATA/dpo_judge/*.jsonl; the others
read the embedded pairs (a correct worked solution against one with a wrong step or answer) for
both stages. beta and the LR are unpublished: dpo.beta defaults to 0.1.

  python -m phi4_jax.main --config=experiments/dpo.py:colab --workdir=W --config.init_from=SFT_W
"""

import ml_collections

from experiments import midtrain, pretrain
from phi4_jax.data import config as data_config
from phi4_jax.model import ModelConfig
from phi4_jax.posttrain import dpo

# preset -> seq_len, global batch, steps, peak LR, warmup steps, mesh (data, fsdp, tensor), microbatches
PRESETS = {
    "test": dict(seq_len=512, global_batch_size=4, steps=8, peak_lr=1e-4, warmup=2, mesh=(1, -1, 1),
                 microbatches=1),
    "colab": dict(seq_len=512, global_batch_size=4, steps=8, peak_lr=2e-4, warmup=2, mesh=(1, -1, 1),
                  microbatches=1),
    "1b": dict(seq_len=4096, global_batch_size=64, steps=500, peak_lr=1e-6, warmup=20,
               mesh=(1, -1, 1), microbatches=2),
    "phi4_14b": dict(seq_len=16_384, global_batch_size=128, steps=1_000, peak_lr=5e-7, warmup=20,
                     mesh=(1, -1, 1), microbatches=1),
}


def pair_sources(size: str, stage: str) -> dict[str, ml_collections.ConfigDict]:
  if size == "phi4_14b":
    return {stage: data_config.pairs_source(f"$PHI4_DATA/dpo_{stage}/*.jsonl", 1.0)}
  return data_config.embedded_dpo_sources()


def get_config(arg: str = "colab") -> ml_collections.ConfigDict:
  size, stage = (arg.removesuffix("_judge"), "judge") if arg.endswith("_judge") else (arg, "pts")
  config = pretrain.stage_config(size, PRESETS, f"dpo_{stage}")
  config.objective = "dpo"
  config.dpo = dpo.dpo_fields()
  config.optimizer.weight_decay = 0.0  # preference tuning moves few weights a little
  config.model = ModelConfig.preset(size, rope_theta=midtrain.MIDTRAIN_ROPE_THETA,
                                    max_seq_len=max(config.seq_len, 16_384)).to_config_dict()
  config.data = data_config.data(pair_sources(size, stage))
  return config

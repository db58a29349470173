"""Direct preference optimization (docs/RECIPE.md, "Post-training"), starting from SFT's params,
which are also the frozen reference.

Phi-4 runs two DPO stages that differ in data: stage 1 on Pivotal Token Search pairs, stage 2 on
judge-guided pairs. Presets: <size> is stage 1 and <size>_judge stage 2 (test, colab, 1b,
phi4_14b). phi4_14b reads $PHI4_DATA/dpo_pts/*.jsonl or $PHI4_DATA/dpo_judge/*.jsonl; the others
read the embedded pairs (a correct worked solution against one with a wrong step or answer) for
both stages. beta and the LR are unpublished: dpo.beta defaults to 0.1.

The colab LR is measured. On the standard-library corpus (v4), from the sft_synth model (held-out
parity accuracy 0.680), dpo_pts reached 0.684 at LR 1e-5 (8 steps), 0.668 at 3e-5 and 0.660 at 2e-5
for 16 steps: no LR tried gains 0.05. On earlier corpora: DPO (8 steps, the recipe's 64-question PTS
pairs half and half with the embedded math pairs) from the colab SFT model (held-out parity accuracy
0.828: 256 balanced items, greedy) reached 0.859 at LR 1e-5, 0.852 at 2e-5, 0.781 at 5e-5 and 0.641 at 1e-4 (chosen and
rejected log-probs both falling, -0.74 and -0.93 nats against the reference); 16 steps at 2e-5 gave
0.805, PTS pairs alone (no math) at 2e-5 0.824, and 256 questions' pairs (206) at 1e-5 0.813 and at
2e-5 0.648. The gain is small and falls off fast with the LR: 1e-5. An NLL term on the chosen side
(dpo.nll_weight) did not help: 0.855 with w = 0.2 against 0.852 without at 2e-5; on an earlier,
weaker SFT model (0.621) it hurt at every LR tried (2e-4: 0.727 without, 0.559 with 0.2, 0.543 with
1.0; 1e-4: 0.723 and 0.652 with 0.2), so it is off.

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
    "colab": dict(seq_len=512, global_batch_size=4, steps=8, peak_lr=1e-5, warmup=2, mesh=(1, -1, 1),
                  microbatches=1),  # from the sweep in the module docstring
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

"""Direct preference optimization (docs/RECIPE.md, "Post-training"), starting from SFT's params,
which are also the frozen reference.

Phi-4 runs two DPO stages that differ in data: stage 1 on Pivotal Token Search pairs, stage 2 on
judge-guided pairs. Presets: <size> is stage 1 and <size>_judge stage 2 (test, colab, 1b,
phi4_14b). phi4_14b reads $PHI4_DATA/dpo_pts/*.jsonl or $PHI4_DATA/dpo_judge/*.jsonl; the others
read the embedded pairs (a correct worked solution against one with a wrong step or answer) for
both stages. beta and the LR are unpublished: dpo.beta defaults to 0.1.

colab's first stage is measured. From the sft_synth model (held-out parity accuracy 0.680; sft
0.672: 256 balanced items, greedy), on the recipe's PTS pairs (512 questions searched at top_p 0.9,
so that every pivot is an answer word; pts.balance on), held-out parity accuracy after dpo_pts:
- 4 rows of 512 tokens (16 pairs a step), half the embedded math pairs, LR 1e-5, 8 steps: 0.684; the
  same at 3e-5: 0.668; 2e-5 x 16 steps: 0.660 (the recipe's earlier setting: DPO barely moves);
- PTS pairs only, 16 pairs a step, LR 1e-4: unbalanced (92 "odd" chosen, 66 "even") 0.555 / 0.637 at
  steps 8 / 16, balanced 0.695 / 0.715; 3e-5 balanced 0.707 / 0.672; 512 questions x 32 steps
  0.648 / 0.641 / 0.719 / 0.703 at steps 8 / 16 / 24 / 32 (a batch of 16 pairs is a noisy vote
  on the odd/even lean);
- 8 rows of 256 tokens, 5 pairs each (40 pairs a step), LR 1e-4: 0.727 / 0.727 / 0.746 / 0.758 at
  steps 8 / 16 / 24 / 32, held-out reward accuracy 0.69 (parity 0.80, math 0.58); LR 2e-4: 0.527 /
  0.684 at steps 8 / 16. Hence colab: 40 pairs a step, LR 1e-4, 32 steps, no math pairs.
colab_judge (judge pairs of 64 prompts, about 50) keeps the gentle setting: 8 steps at 1e-5, half
the embedded math pairs. An NLL term on the chosen side (dpo.nll_weight) did not help on earlier
corpora: 0.855 with w = 0.2 against 0.852 without at 2e-5; on a weaker SFT model (0.621) it hurt at
every LR tried (2e-4: 0.727 without, 0.559 with 0.2, 0.543 with 1.0; 1e-4: 0.723 and 0.652 with
0.2), so it is off.

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
    "colab": dict(seq_len=256, global_batch_size=8, steps=32, peak_lr=1e-4, warmup=2, mesh=(1, -1, 1),
                  microbatches=1),  # from the sweep in the module docstring
    "colab_judge": dict(seq_len=512, global_batch_size=4, steps=8, peak_lr=1e-5, warmup=2, mesh=(1, -1, 1),
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
  config = pretrain.stage_config(size, {size: PRESETS.get(arg, PRESETS[size])}, f"dpo_{stage}")
  config.objective = "dpo"
  config.dpo = dpo.dpo_fields()
  config.optimizer.weight_decay = 0.0  # preference tuning moves few weights a little
  config.model = ModelConfig.preset(size, rope_theta=midtrain.MIDTRAIN_ROPE_THETA,
                                    max_seq_len=max(config.seq_len, 16_384)).to_config_dict()
  config.data = data_config.data(pair_sources(size, stage))
  if arg == "colab":  # single answer tokens after a short prompt: 5 pairs fill a 256-token row
    config.data.pairs_per_row = 5
    config.dpo.precompute_reference = True  # the same losses; 32 steps in 2 min 20 s instead of 2 min 35 s
  return config

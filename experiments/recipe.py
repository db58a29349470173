"""The Phi-4 recipe as one run, in the paper's order: pretrain (4K) -> midtrain (16K, RoPE 250K,
LR/10) -> sft -> pts (Pivotal Token Search on the SFT model) -> dpo_pts -> judge (judge-guided
pairs from the DPO model's responses) -> dpo_judge. The test preset stops after one DPO stage on
the embedded pairs (its model is too small for a search to find anything).

python -m phi4_jax.main --config=experiments/recipe.py:colab --workdir=W
Each stage runs in W/<stage> and starts from the last training stage before it; override a
stage's field with e.g. --config.pretrain.steps=50.
"""

import os

from phi4_jax import configs
from phi4_jax.data import config as data_config
from phi4_jax.eval import eval_fields

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("pretrain", "midtrain", "sft", "pts", "dpo_pts", "judge", "dpo_judge")
TEST_STAGES = ("pretrain", "midtrain", "sft", "dpo")
# colab: the post-training stages' models are evaluated at their last step (their report rows
# show it): parity accuracy (the family PTS searches) and exercise multiple choice, held out
# (32 items each).
COLAB_EVAL = dict(tasks="answers,choice", answers_file="embedded:parity", limit=32, max_new_tokens=12)
# Greedy continuations of these texts by the last stage's model end the recipe's report.
SAMPLE_PROMPTS = ("def fibonacci(n):", "The Python standard library", "Question: What is 17 + 25?")


def dpo_stage(arg: str, pairs_from: str, variant: str = ""):
  """A DPO stage on an earlier data stage's pairs, mixed half and half with the embedded math pairs
  below paper scale."""
  c = configs.load(f"{os.path.join(HERE, 'dpo')}.py:{arg}{variant}")
  made = data_config.pairs_source(f"stage:{pairs_from}", 1.0)
  if arg in ("test", "colab"):
    made.fraction = 0.5
    c.data = data_config.data({pairs_from: made, "math": data_config.pairs_source("corpus:dpo_pairs", 0.5)})
  else:
    c.data = data_config.data({pairs_from: made})
  c.stage = f"dpo_{pairs_from}"
  return c


def get_config(arg: str = "colab"):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.stages = TEST_STAGES if arg == "test" else STAGES  # run in this order
  c.sample_prompts = SAMPLE_PROMPTS if arg in ("test", "colab") else ()  # () = no samples
  c.sample_tokens = 24  # new tokens per sample
  if arg == "colab":  # pairs no stage trains on, for the DPO stages' held-out rewards
    c.dpo_heldout = ml_collections.ConfigDict(data_config.embedded_dpo_sources(heldout=True))
    c.dpo_heldout_pairs = 100  # the first 100 of them (0 = all)
  for stage in ("pretrain", "midtrain", "sft") + (("dpo",) if arg == "test" else ("pts", "judge")):
    c[stage] = configs.load(f"{os.path.join(HERE, stage)}.py:{arg}")
  if arg != "test":
    c.dpo_pts, c.dpo_judge = dpo_stage(arg, "pts"), dpo_stage(arg, "judge", "_judge")
  if arg == "colab":
    for stage in ("sft", "dpo_pts", "dpo_judge"):
      c[stage].eval = eval_fields(every=c[stage].steps, **COLAB_EVAL)
  return c

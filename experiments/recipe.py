"""The Phi-4 recipe as one run: pretrain (4K) -> midtrain (16K, RoPE 250K, LR/10) -> sft -> dpo.

python -m phi4_jax.main --config=experiments/recipe.py:colab --workdir=W
Each stage runs in W/<stage> and starts from the previous stage's params; override a stage's
field with e.g. --config.pretrain.steps=50.
"""

import os

from phi4_jax import configs
from phi4_jax.data import config as data_config

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("pretrain", "midtrain", "sft", "dpo")
# Greedy continuations of these texts by the last stage's model end the recipe's report.
SAMPLE_PROMPTS = ("def fibonacci(n):", "The Python standard library", "Question: What is 17 + 25?")


def get_config(arg: str = "colab"):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.stages = STAGES  # run in this order; each starts from the one before
  c.sample_prompts = SAMPLE_PROMPTS if arg in ("test", "colab") else ()  # () = no samples
  c.sample_tokens = 24  # new tokens per sample
  if arg == "colab":  # pairs no stage trains on, for the DPO stages' held-out rewards
    c.dpo_heldout = ml_collections.ConfigDict(data_config.embedded_dpo_sources(heldout=True))
  for stage in STAGES:
    c[stage] = configs.load(f"{os.path.join(HERE, stage)}.py:{arg}")
  return c

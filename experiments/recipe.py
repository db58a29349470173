"""The Phi-4 recipe as one run, in the paper's order: pretrain (4K) -> midtrain (16K, RoPE 250K,
LR/10) -> sft -> [colab: synth (experiments/synth.py:colab on the SFT model: rejection-sampled
solutions the oracle accepts) -> sft_synth (SFT continued on them)] -> refusal (the model's refusal
pairs) -> pts (Pivotal Token Search) -> dpo_pts -> judge (judge-guided pairs from the DPO model's
responses) -> dpo_judge. Both
DPO stages mix in the refusal pairs at `refusal_share` (Table 9: 1-5%). The test preset stops
after one DPO stage on the embedded pairs (its model is too small for a search to find anything).

python -m phi4_jax.main --config=experiments/recipe.py:colab --workdir=W
Each stage runs in W/<stage> and starts from the last training stage before it; override a
stage's field with e.g. --config.pretrain.steps=50.
"""

import os

import ml_collections

from phi4_jax import configs
from phi4_jax.data import config as data_config
from phi4_jax.eval import eval_fields
from phi4_jax.synth import stage as synth_stage

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("pretrain", "midtrain", "sft", "refusal", "pts", "dpo_pts", "judge", "dpo_judge")
# colab adds the synth stage and SFT on its records after sft (at paper scale the synthetic data is
# made before pretraining, by a teacher: python -m phi4_jax.synth --pipeline=experiments/synth.py:1b)
COLAB_STAGES = STAGES[:3] + ("synth", "sft_synth") + STAGES[3:]
TEST_STAGES = ("pretrain", "midtrain", "sft", "dpo")
REFUSAL_SHARE = 0.03  # the refusal pairs' share of each DPO stage's pairs (Table 9: 1-5%)
SYNTH_SHARE = 0.5  # colab sft_synth: the rejection-sampled records' share of its SFT mixture
# colab sft_synth: 16 steps from sft at LR 5e-5. Held-out parity accuracy on two earlier embedded
# corpora (whose `web` source held the installed packages' text):
# from a 0.828 SFT model 5e-5 -> 0.852, 1e-4 -> 0.844, 2e-4 -> 0.719; from a 0.719 one 2e-5 -> 0.734,
# 5e-5 -> 0.730, 1e-4 -> 0.656.
SFT_SYNTH = dict(steps=16, peak_lr=5e-5)
# colab: the post-training stages' models are evaluated at their last step (their report rows
# and evaluations table show it, beside the majority-class baseline): greedy accuracy on the 256
# held-out parity questions (balanced; the family SFT teaches and PTS and the judge search).
COLAB_EVAL = dict(tasks="answers", answers_file="embedded:parity", limit=256, max_new_tokens=6)
# Each evaluated stage's greedy chat replies to these, side by side in W/samples.md (held-out items).
CHAT_PROMPTS = ("Are there more odd or even numbers in this list: 7 2 9 4 1 3 8?",
                "Are there more odd or even numbers in this list: 2 6 5 8 1?",
                "Are there more odd or even numbers in this list: 9 4 4 3 6 0 1 5 2?",
                "Compute 12 + 7 × 3 − 5.", "Who are you?")
# Greedy continuations of these texts by the last stage's model end the recipe's report.
SAMPLE_PROMPTS = ("def fibonacci(n):", "The Python standard library", "Question: What is 17 + 25?")


def dpo_stage(arg: str, pairs_from: str, variant: str = "", refusal_share=None):
  """A DPO stage on an earlier data stage's pairs, mixed half and half with the embedded math pairs
  in test and colab's judge stage (colab's PTS pairs alone: experiments/dpo.py); with `refusal_share` (a share, or a reference to the recipe's field) the
  refusal stage's pairs take that share and the others the rest, in the same proportions."""
  c = configs.load(f"{os.path.join(HERE, 'dpo')}.py:{arg}{variant}")
  sources = {pairs_from: data_config.pairs_source(f"stage:{pairs_from}", 1.0)}
  if arg == "test" or (arg == "colab" and variant):
    sources[pairs_from].fraction = 0.5
    sources["math"] = data_config.pairs_source("corpus:dpo_pairs", 0.5)
  if refusal_share is not None:
    for source in sources.values():
      source.fraction = (1 - refusal_share) * source.fraction
    sources["refusal"] = data_config.pairs_source("stage:refusal", 0.0)
    sources["refusal"].fraction = refusal_share
  c.data = data_config.data(sources, pairs_per_row=c.data.pairs_per_row)
  c.stage = f"dpo_{pairs_from}"
  return c


def sft_on_synth(arg: str):
  """SFT continued on the synth stage's rejection-sampled records (the oracle's accepted solutions
  of the model's own samples) mixed with the SFT sources."""
  c = configs.load(f"{os.path.join(HERE, 'sft')}.py:{arg}")
  sources = dict(c.data.sources)
  for source in sources.values():
    source.fraction *= 1 - SYNTH_SHARE
  sources["synth"] = data_config.chat_source("stage:synth/rejection_sampling", SYNTH_SHARE)
  c.data = data_config.data(sources)
  if arg == "colab":
    c.steps, c.optimizer.peak_lr = SFT_SYNTH["steps"], SFT_SYNTH["peak_lr"]
  c.stage = "sft_synth"
  return c


def get_config(arg: str = "colab"):
  c = ml_collections.ConfigDict()
  c.stages = {"test": TEST_STAGES, "colab": COLAB_STAGES}.get(arg, STAGES)  # run in this order
  c.sample_prompts = SAMPLE_PROMPTS if arg in ("test", "colab") else ()  # () = no samples
  c.sample_tokens = 24  # new tokens per sample
  if arg == "colab":  # pairs no stage trains on, for the DPO stages' held-out rewards
    c.dpo_heldout = ml_collections.ConfigDict(data_config.embedded_dpo_sources(heldout=True))
    c.dpo_heldout_pairs = 100  # the first 100 of each source (0 = all)
  c.chat_prompts = CHAT_PROMPTS if arg == "colab" else ()  # () = no side-by-side chat samples
  for stage in ("pretrain", "midtrain", "sft") + (("dpo",) if arg == "test" else ("refusal", "pts", "judge")):
    c[stage] = configs.load(f"{os.path.join(HERE, stage)}.py:{arg}")
  if arg == "colab":
    c.synth = synth_stage.stage_config(configs.load(f"{os.path.join(HERE, 'synth')}.py:{arg}"))
    c.sft_synth = sft_on_synth(arg)
  if arg != "test":  # --config.refusal_share=0.05 moves both DPO stages' mixes
    c.refusal_share = ml_collections.FieldReference(REFUSAL_SHARE)
    share = c.get_ref("refusal_share")
    c.dpo_pts = dpo_stage(arg, "pts", refusal_share=share)
    c.dpo_judge = dpo_stage(arg, "judge", "_judge", refusal_share=share)
  if arg == "colab":
    for stage in ("sft", "sft_synth", "dpo_pts", "dpo_judge"):
      c[stage].eval = eval_fields(every=c[stage].steps, **COLAB_EVAL)
  return c

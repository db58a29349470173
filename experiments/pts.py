"""Pivotal Token Search (docs/RECIPE.md, "Pivotal Token Search"): DPO pairs of single tokens from
the SFT model's rollouts, for the first DPO stage.

colab searches 512 questions of the embedded parity family ("Are there more odd or even numbers in
this list: 3 8 5 1 6?"), which the colab SFT model answers in the right form and right most of the
time but not always (lists whose counts differ by one are the hard ones), so that the answer word
after "Final answer:" is pivotal on the questions it is unsure of. Its rollouts sample the top 0.9
of the mass: at top_p 1 half its pivots were a junk token (" Shuffle", " hero") against the answer,
which teaches DPO nothing about the task; balanced (pts.balance), the pairs prefer "odd" as often as
"even". 1b the embedded math exercises
and parity questions; phi4_14b $PHI4_DATA/pts/questions.jsonl (oracles.py's records: final
answers, multiple choice, Python tests).

  python -m phi4_jax.main --config=experiments/pts.py:colab --workdir=W --config.init_from=SFT_W
"""

from phi4_jax.posttrain import stages

# preset -> questions, how many, settings (rollouts per prefix, tokens per rollout, temperature,
# questions per round)
PRESETS = {
    "test": dict(questions="corpus:parity", num=4, settings=dict(
        num_rollouts=8, max_new_tokens=8, temperature=0.5, questions_per_round=4)),
    "colab": dict(questions="corpus:parity", num=512, settings=dict(
        num_rollouts=16, max_new_tokens=6, temperature=1.0, top_p=0.9, questions_per_round=64)),
    "1b": dict(questions="corpus:mixed", num=4_000, settings=dict(
        num_rollouts=64, max_new_tokens=512, temperature=1.0, questions_per_round=16)),
    "phi4_14b": dict(questions="$PHI4_DATA/pts/questions.jsonl", num=0, settings=dict(
        num_rollouts=64, max_new_tokens=2_048, temperature=1.0, questions_per_round=32)),
}


def get_config(arg: str = "colab"):
  return stages.preset("pts", PRESETS, arg)

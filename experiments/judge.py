"""Judge-guided pairs (docs/RECIPE.md, "Post-training", DPO stage 2): responses of the first DPO
stage's model, scored 1-5 on accuracy, style and detail, best against worst.

At colab scale the judge is the rule-based one (accuracy from the oracle, style and detail from
the reply's form); at paper scale set `responders` to several models and `judge` to a strong
model's endpoint, e.g. --config.judge=http://host:8000/v1,model=NAME (key from $OPENAI_API_KEY).

  python -m phi4_jax.main --config=experiments/judge.py:colab --workdir=W --config.init_from=DPO_W
"""

from phi4_jax.posttrain import stages

# preset -> prompts, how many, settings (responses per prompt, tokens per response, prompts per round)
PRESETS = {
    "test": dict(questions="corpus:mixed", num=4, settings=dict(
        num_responses=2, max_new_tokens=8, prompts_per_round=4)),
    "colab": dict(questions="corpus:mixed", num=64, settings=dict(
        num_responses=4, max_new_tokens=32, prompts_per_round=64)),
    "1b": dict(questions="corpus:mixed", num=4_000, settings=dict(
        num_responses=4, max_new_tokens=512, prompts_per_round=32)),
    "phi4_14b": dict(questions="$PHI4_DATA/judge/prompts.jsonl", num=0, settings=dict(
        num_responses=4, max_new_tokens=2_048, prompts_per_round=64)),
}


def get_config(arg: str = "colab"):
  return stages.preset("judge", PRESETS, arg)

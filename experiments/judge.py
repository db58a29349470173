"""Judge-guided pairs (docs/RECIPE.md, "Post-training", DPO stage 2): responses of the first DPO
stage's model, scored 1-5 on accuracy, style and detail, best against worst.

At colab scale the judge is the rule-based one (accuracy from the oracle, style and detail from
the reply's form); at paper scale set `responders` to several models and `judge` to a strong
model's endpoint, e.g. --config.judge=http://host:8000/v1,model=NAME (key from $OPENAI_API_KEY).

  python -m phi4_jax.main --config=experiments/judge.py:colab --workdir=W --config.init_from=DPO_W
"""

from phi4_jax.posttrain import stages

# preset -> prompts, how many, responses per prompt, tokens per response, prompts per round
PRESETS = {
    "test": dict(prompts="corpus:mixed", num=4, responses=2, tokens=8, per_round=4),
    "colab": dict(prompts="corpus:mixed", num=64, responses=4, tokens=32, per_round=64),
    "1b": dict(prompts="corpus:mixed", num=4_000, responses=4, tokens=512, per_round=32),
    "phi4_14b": dict(prompts="$PHI4_DATA/judge/prompts.jsonl", num=0, responses=4, tokens=2_048, per_round=64),
}


def get_config(arg: str = "colab"):
  if arg not in PRESETS:
    raise ValueError(f"unknown preset {arg!r}; choose one of {sorted(PRESETS)}")
  p = PRESETS[arg]
  c = stages.stage_fields("judge")
  c.questions, c.num_questions = p["prompts"], p["num"]
  c.settings.num_responses, c.settings.max_new_tokens = p["responses"], p["tokens"]
  c.settings.prompts_per_round = p["per_round"]
  return c

"""Refusal data against hallucination (the paper's appendix A.1): the SFT model answers each
question num_samples times; SFT conversations (its right answer where it is usually right, a
refusal where it is usually wrong, a refusal to each bogus variant) and DPO pairs cut to their
first 5 tokens (right answer > refusal where it is sometimes right, refusal > its wrong answer
where it is sometimes wrong), which both DPO stages mix in at a small share (Table 9: 1-5%).
posttrain/refusal.py states the rules.

test and colab sample the embedded mixed family (parity and math exercises: 4 and 32 questions,
4 and 8 samples each) with the template refusals and bogus variants; 1b 4,000 of them; phi4_14b
$PHI4_DATA/refusal/questions.jsonl (e.g. trivia with answers, oracles.py's records) and should get
a teacher: --config.teacher=http://host:8000/v1,model=NAME (key from $OPENAI_API_KEY).

  python -m phi4_jax.main --config=experiments/refusal.py:colab --workdir=W --config.init_from=SFT_W
"""

from phi4_jax.posttrain import stages

# preset -> questions, how many, samples per question, tokens per answer, temperature, questions per round
PRESETS = {
    "test": dict(questions="corpus:mixed", num=4, samples=4, tokens=8, temperature=0.5, per_round=4),
    "colab": dict(questions="corpus:mixed", num=32, samples=8, tokens=24, temperature=0.5, per_round=32),
    "1b": dict(questions="corpus:mixed", num=4_000, samples=8, tokens=512, temperature=0.8, per_round=32),
    "phi4_14b": dict(questions="$PHI4_DATA/refusal/questions.jsonl", num=0, samples=8, tokens=1_024,
                     temperature=0.8, per_round=64),
}


def get_config(arg: str = "colab"):
  if arg not in PRESETS:
    raise ValueError(f"unknown preset {arg!r}; choose one of {sorted(PRESETS)}")
  p = PRESETS[arg]
  c = stages.stage_fields("refusal")
  c.questions, c.num_questions = p["questions"], p["num"]
  s = c.settings
  s.num_samples, s.max_new_tokens, s.temperature = p["samples"], p["tokens"], p["temperature"]
  s.questions_per_round = p["per_round"]
  return c

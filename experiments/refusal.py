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

# preset -> questions, how many, settings (samples per question, tokens per answer, temperature,
# questions per round)
PRESETS = {
    "test": dict(questions="corpus:mixed", num=4, settings=dict(
        num_samples=4, max_new_tokens=8, temperature=0.5, questions_per_round=4)),
    "colab": dict(questions="corpus:mixed", num=32, settings=dict(
        num_samples=8, max_new_tokens=24, temperature=0.5, questions_per_round=32)),
    "1b": dict(questions="corpus:mixed", num=4_000, settings=dict(
        num_samples=8, max_new_tokens=512, temperature=0.8, questions_per_round=32)),
    "phi4_14b": dict(questions="$PHI4_DATA/refusal/questions.jsonl", num=0, settings=dict(
        num_samples=8, max_new_tokens=1_024, temperature=0.8, questions_per_round=64)),
}


def get_config(arg: str = "colab"):
  return stages.preset("refusal", PRESETS, arg)

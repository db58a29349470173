"""The plurality filter: normalisation, the vote's rules by hand, and a run with a toy sampler."""

import json

from phi4_jax.posttrain import plurality, rollouts
from phi4_jax.posttrain.rollouts import TOKENIZER


def test_normalize_by_value_words_and_letters():
  assert plurality.normalize("so... Final answer: 0.5") == plurality.normalize("\\boxed{1/2}") == "1/2"
  assert plurality.normalize("\\boxed{\\frac{1}{2}}") == "1/2"
  assert plurality.normalize("Answer: x = 3 or x = -4") == "3 -4"
  assert plurality.normalize("Answer:  Paris.") == "paris"
  assert plurality.normalize("Answer: (c)", "multiple_choice") == "C"
  assert plurality.normalize("no idea", "multiple_choice") is None
  assert plurality.normalize("") is None


def test_vote_rules_by_hand():
  assert plurality.vote(["7"] * 8) == (None, "too_easy")
  assert plurality.vote(["7"] * 5 + ["8"] * 2 + [None]) == ("7", "kept")
  assert plurality.vote(["7", "7", "8", "8", "9"]) == (None, "no_plurality")  # a tie at the top
  assert plurality.vote(["1", "2", "3", "4"]) == (None, "no_plurality")  # nobody agrees
  assert plurality.vote([None] * 4) == (None, "no_plurality")
  assert plurality.vote(["7"] * 7 + ["8"], max_share=0.8) == (None, "too_easy")
  assert plurality.vote(["7", "7", "8", "9", "10", "11"], min_share=0.4) == (None, "no_plurality")


class AnswerRoller(rollouts.Roller):
  """Answers question i with the answers planted for it, in order."""

  def __init__(self, planted):
    super().__init__(None, None, plurality.plurality_fields())
    self.planted = planted

  def sample(self, prompts, num_samples, sample_ids):
    out = []
    for prompt in prompts:
      text = TOKENIZER.decode(prompt)
      qid = next(q for q in self.planted if f"question {q}?" in text)
      out += [TOKENIZER.encode_ordinary(f"Final answer: {a}") + [TOKENIZER.im_end_id] for a in self.planted[qid]]
    return out


def test_run_keeps_plurality_questions_with_their_answer_and_resumes(tmp_path):
  planted = {"a": ["7"] * 8, "b": ["3", "3", "3", "4", "5", "3", "4", "1/2"], "c": ["1", "2"] * 4}
  questions = [{"id": q, "question": f"question {q}?"} for q in planted]
  out = str(tmp_path / "kept.jsonl")
  summary = plurality.run(AnswerRoller(planted), questions, out, plurality.plurality_fields(), progress=None)
  assert summary == {"questions": 3, "kept": 1, "too_easy": 1, "no_plurality": 1}
  (kept,) = [json.loads(line) for line in open(out)]
  assert kept["id"] == "b" and kept["answer"] == "3"
  again = plurality.run(AnswerRoller({}), questions, out, plurality.plurality_fields(), progress=None)
  assert again == summary  # everything was in the log: nothing sampled again

"""rejection_sampling: questions with answers -> num_solutions sampled solutions -> only those the
oracle accepts, as chat records (the Phi-4 report's rejection sampling for SFT data).

Seeds: posttrain/oracles.py's question records (`question` or `messages`; `answer` or `tests`;
`kind`). A seed without an answer gets the plurality answer of its own solutions with plurality=true
(posttrain/plurality.py's normalize and vote: a share of at least plurality_min_share, else
`no_plurality`); without plurality it is an error naming the seed. Every distinct solution is a
candidate whose oracle check (a slow check, after the cheap ones) rejects it as `wrong_answer`; at
most keep_per_question are accepted per question (the rest `extra_solution`). Records:
{"messages": [the question's turns, assistant solution]}. Counted against `synthetic`.
"""

from __future__ import annotations

from phi4_jax import fields
from phi4_jax.posttrain import plurality
from phi4_jax.synth import protocol
from phi4_jax.synth.generator import Ask

NAME, SOURCE = "rejection_sampling", "synthetic"
PROMPTS = protocol.load_prompts(NAME)
FIELDS = fields.Group(
    num_solutions=fields.Field(8, fields.integer(1), "solutions sampled per question"),
    keep_per_question=fields.Field(1, fields.integer(1), "accepted solutions kept per question at most"),
    plurality=fields.Field(False, fields.boolean(),
                           "a question without an answer takes its solutions' plurality answer"),
    plurality_min_share=fields.Field(0.5, fields.number(0, 1), "the plurality answer's least share of the votes"),
)


def items(seed: dict, settings) -> list[dict]:
  if not (isinstance(seed.get("question"), str) and seed["question"].strip()) and not seed.get("messages"):
    raise ValueError(f"{seed.get('seed_file', '?')}: seed {seed['id']}: rejection_sampling needs `question` "
                     "or `messages`")
  if "answer" not in seed and "tests" not in seed and not settings.plurality:
    raise ValueError(f"{seed.get('seed_file', '?')}: seed {seed['id']}: no `answer` or `tests` "
                     "(--config.plurality=true takes the plurality answer)")
  keep = {k: seed[k] for k in ("question", "messages", "answer", "tests", "kind") if k in seed}
  return [{"id": seed["id"], "seed_id": seed["seed_id"], "question": keep}]


def conversation(question: dict) -> list[dict]:
  if question.get("messages"):
    return list(question["messages"])
  return list(PROMPTS.messages("solve", question=question["question"]))


def seed_text(item: dict) -> str:
  """What the seed filter scores."""
  return item["question"].get("question") or item["question"]["messages"][-1]["content"]


def make(item: dict, settings):
  question, messages = dict(item["question"]), conversation(item["question"])
  ask = Ask(tuple(messages), settings.temperature, settings.max_new_tokens)
  replies = yield [ask] * settings.num_solutions
  trail = []
  if "answer" not in question and "tests" not in question:
    kind = question.get("kind", "final_answer")
    answer, why = plurality.vote([plurality.normalize(r, kind) for r in replies],
                                 min_share=settings.plurality_min_share, max_share=2.0)  # (unanimous is fine)
    trail.append({"plurality": answer, "why": why})
    if answer is None:
      return protocol.rejected("no_plurality", trail)
    question["answer"] = answer
  solutions = list(dict.fromkeys(r.strip() for r in replies if r.strip()))
  if not solutions:
    return protocol.rejected("empty", trail)
  candidates = [protocol.candidate({"messages": messages + [{"role": "assistant", "content": s}]},
                                   checks=[{"check": "oracle", "question": question, "completion": s}])
                for s in solutions]
  return {**protocol.made(*candidates), "keep": settings.keep_per_question, "trail": trail}

"""qa_extraction: a deduction chain found in a passage of seed text or code, reformulated as a
question and its answer (a chat record).

Seeds: `text` or `code`. The reply must be `Question: ...` then `Answer: ...` (asked again up to
`retries` times, then `unparsable`); an answer of fewer than min_answer_words words is `short_answer`.
Records: {"messages": [user question, assistant answer]}, counted against `synthetic`.
"""

from __future__ import annotations

from phi4_jax import fields
from phi4_jax.synth import protocol, seeds
from phi4_jax.synth.generator import Ask

NAME, SOURCE = "qa_extraction", "synthetic"
PROMPTS = protocol.load_prompts(NAME)
FIELDS = fields.Group(
    min_answer_words=fields.Field(3, fields.integer(1), "an answer of fewer words is rejected (short_answer)"),
)


def items(seed: dict, settings) -> list[dict]:
  text = seeds.field(seed, ("text", "code"), NAME)
  return [{"id": f"{seed['id']}/p{k}", "seed_id": seed["seed_id"], "text": passage}
          for k, passage in enumerate(protocol.passages(text, settings.passage_words))]


def seed_text(item: dict) -> str:
  """What the seed filter scores."""
  return item["text"]


def make(item: dict, settings):
  ask = Ask(PROMPTS.messages("extract", passage=item["text"]), settings.temperature, settings.max_new_tokens)
  found, reply = yield from protocol.ask_parsed(ask, lambda r: protocol.labelled(r, ("Question", "Answer")),
                                                settings.retries)
  if found is None:
    return protocol.rejected("unparsable", [{"reply": reply}])
  if len(found["Answer"].split()) < settings.min_answer_words:
    return protocol.rejected("short_answer", [{"reply": reply}])
  return protocol.made(protocol.candidate({"messages": [{"role": "user", "content": found["Question"]},
                                                        {"role": "assistant", "content": found["Answer"]}]}))

"""self_revision: a draft, then up to `rounds` rounds of a rubric critique and a revision, stopping
as soon as every rubric score reaches min_score (the Phi-4 report's self-revision).

Seeds: the task, `question` or `text`. Round r critiques the current response (each rubric item
scored 1..scale on a `name: N` line, asked again up to `retries` times, then `unparsable_critique`);
if every score reaches min_score the item stops, else the response is revised and round r + 1
critiques the revision. After `rounds` revisions a last critique scores the final response, so a
response is critiqued at most rounds + 1 times. Records: {"messages": [user task, assistant final
response]}; the trail keeps each round's scores and critique, and the candidate's scores are the
final ones (the engine's score_gate reads them). Counted against `synthetic`.
"""

from __future__ import annotations

from phi4_jax import fields
from phi4_jax.synth import protocol, seeds
from phi4_jax.synth.generator import Ask

NAME, SOURCE = "self_revision", "synthetic"
PROMPTS = protocol.load_prompts(NAME)
FIELDS = fields.Group(
    rounds=fields.Field(2, fields.integer(0), "critique-and-revise rounds at most"),
    min_score=fields.Field(8, fields.integer(1), "stop once every rubric score reaches this"),
    scale=fields.Field(10, fields.integer(2), "rubric scores run from 1 to this"),
    rubric=fields.Field("reasoning,factual_accuracy,clarity", fields.string(), "rubric items, comma-separated"),
)


def rubric(settings) -> tuple[str, ...]:
  names = tuple(n.strip().lower().replace(" ", "_") for n in settings.rubric.split(",") if n.strip())
  if not names:
    raise ValueError("config.rubric: no rubric items")
  return names


def items(seed: dict, settings) -> list[dict]:
  return [{"id": seed["id"], "seed_id": seed["seed_id"], "task": seeds.field(seed, ("question", "text"), NAME)}]


def seed_text(item: dict) -> str:
  """What the seed filter scores."""
  return item["task"]


def make(item: dict, settings):
  names, task = rubric(settings), item["task"]
  draft, = yield [Ask(PROMPTS.messages("draft", task=task), settings.temperature, settings.max_new_tokens)]
  response, trail = draft.strip(), []
  if not response:
    return protocol.rejected("empty", trail)
  fmt = "\n".join(f"{n}: <1-{settings.scale}>" for n in names)
  for r in range(settings.rounds + 1):
    ask = Ask(PROMPTS.messages("critique", task=task, response=response, rubric=", ".join(names),
                               scale=str(settings.scale), format=fmt), 0.0, settings.max_new_tokens)
    scores, critique = yield from protocol.ask_parsed(
        ask, lambda reply: protocol.parse_scores(reply, names, 1, settings.scale), settings.retries)
    if scores is None:
      return protocol.rejected("unparsable_critique", trail)
    trail.append({"round": r, "scores": scores, "critique": critique})
    if min(scores.values()) >= settings.min_score or r == settings.rounds:
      break
    revised, = yield [Ask(PROMPTS.messages("revise", task=task, response=response, critique=critique),
                          settings.temperature, settings.max_new_tokens)]
    if not revised.strip():
      return protocol.rejected("empty_revision", trail)
    response = revised.strip()
    trail[-1]["revision"] = response
  record = {"messages": [{"role": "user", "content": task}, {"role": "assistant", "content": response}]}
  return protocol.made(protocol.candidate(record, scores=scores, trail=trail))

"""multi_agent: a conversation between agents with profiles, taking turns in order, each turn
self-evaluated by its agent before the next (the Phi-4 report's appendix D.1.3).

Seeds: the topic, `text` (or `question`), one item per passage. Turn t is agent t % len(agents)'s:
it writes the turn, then rates it (a `Score: N` line, 1-5, asked again up to `retries` times); a turn
rated under min_turn_score is written again (up to turn_retries times), and an item whose turn never
reaches it is rejected (`low_turn_score`; `unparsable` when no rating parsed, `empty` for an empty
turn). Records: {"messages"}: the turns alternate user and assistant, the first agent's turns being
the user's; the trail keeps each turn's agent and score. Counted against `synthetic`.
"""

from __future__ import annotations

import re

from phi4_jax import fields
from phi4_jax.synth import protocol, seeds
from phi4_jax.synth.generator import Ask

NAME, SOURCE = "multi_agent", "synthetic"
PROMPTS = protocol.load_prompts(NAME)
FIELDS = fields.Group(
    turns=fields.Field(4, fields.integer(2), "turns per conversation"),
    profiles=fields.Field("student: a curious student who asks precise questions|"
                          "teacher: a patient expert who explains step by step", fields.string(),
                          'the agents, "name: profile" separated by "|", taking turns in this order'),
    min_turn_score=fields.Field(3, fields.integer(1, 5), "a turn its agent rates under this is written again"),
    turn_retries=fields.Field(1, fields.integer(0), "times a low-rated turn is written again"),
)
_SCORE = re.compile(r"score\s*:\s*([1-5])\b", re.IGNORECASE)


def agents(settings) -> list[tuple[str, str]]:
  found = [tuple(x.strip() for x in p.split(":", 1)) for p in settings.profiles.split("|") if p.strip()]
  if len(found) < 2 or any(len(a) != 2 or not all(a) for a in found):
    raise ValueError(f'config.profiles: {settings.profiles!r}: expected two or more "name: profile" separated by "|"')
  return found


def items(seed: dict, settings) -> list[dict]:
  text = seeds.field(seed, ("text", "question"), NAME)
  return [{"id": f"{seed['id']}/p{k}", "seed_id": seed["seed_id"], "topic": passage}
          for k, passage in enumerate(protocol.passages(text, settings.passage_words))]


def _score(reply: str) -> int | None:
  m = _SCORE.search(reply)
  return int(m.group(1)) if m else None


def seed_text(item: dict) -> str:
  """What the seed filter scores."""
  return item["topic"]


def make(item: dict, settings):
  roster, turns = agents(settings), []
  for t in range(settings.turns):
    name, profile = roster[t % len(roster)]
    transcript = "\n".join(f"{x['agent']}: {x['content']}" for x in turns) or "(nothing yet)"
    for attempt in range(settings.turn_retries + 1):
      temperature = settings.temperature if attempt == 0 else max(settings.temperature, protocol.RETRY_TEMPERATURE)
      reply, = yield [Ask(PROMPTS.messages("turn", profile=f"{name}, {profile}", topic=item["topic"],
                                           transcript=transcript), temperature, settings.max_new_tokens)]
      if not reply.strip():
        return protocol.rejected("empty", turns)
      ask = Ask(PROMPTS.messages("evaluate", profile=f"{name}, {profile}", topic=item["topic"],
                                 transcript=transcript, turn=reply.strip()), 0.0, 16)
      score, _ = yield from protocol.ask_parsed(ask, _score, settings.retries)
      if score is None:
        return protocol.rejected("unparsable", turns)
      if score >= settings.min_turn_score:
        break
    else:
      return protocol.rejected("low_turn_score", turns)
    turns.append({"agent": name, "content": reply.strip(), "score": score})
  messages = [{"role": "user" if k % 2 == 0 else "assistant", "content": x["content"]} for k, x in enumerate(turns)]
  return protocol.made(protocol.candidate({"messages": messages}, scores={"turn_min": min(x["score"] for x in turns)},
                                          trail=turns))

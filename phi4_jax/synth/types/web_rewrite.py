"""web_rewrite: seed documents split into passages, each rewritten as a textbook section, exercises
with worked solutions, or questions and answers (the Phi-4 report's "rewrite and augment").

Seeds: `text`. Passage k of a seed gets style styles[crc32(item id) % len(styles)]. A rewrite that
is empty is rejected (`empty`), one whose word 5-gram Jaccard with its passage is at or above
max_copy is a copy (`copy`). Records: {"text"}, counted against the `web_rewrites` source.
"""

from __future__ import annotations

import zlib

from phi4_jax import fields
from phi4_jax.synth import protocol, seeds
from phi4_jax.synth.generator import Ask

NAME, SOURCE = "web_rewrite", "web_rewrites"
PROMPTS = protocol.load_prompts(NAME)
STYLES = ("textbook", "exercises", "qa")
FIELDS = fields.Group(
    styles=fields.Field(",".join(STYLES), fields.string(),
                        f"rewrite styles, comma-separated, of {', '.join(STYLES)}"),
    max_copy=fields.Field(0.5, fields.number(0, 1),
                          "a rewrite whose word 5-gram Jaccard with its passage reaches this is a copy"),
)


def styles(settings) -> list[str]:
  chosen = [s.strip() for s in settings.styles.split(",") if s.strip()]
  unknown = [s for s in chosen if s not in STYLES]
  if unknown or not chosen:
    raise ValueError(f"config.styles: {settings.styles!r}: choose from {', '.join(STYLES)}")
  return chosen


def items(seed: dict, settings) -> list[dict]:
  text = seeds.field(seed, ("text",), NAME)
  return [{"id": f"{seed['id']}/p{k}", "seed_id": seed["seed_id"], "text": passage}
          for k, passage in enumerate(protocol.passages(text, settings.passage_words))]


def seed_text(item: dict) -> str:
  """What the seed filter scores."""
  return item["text"]


def make(item: dict, settings):
  names = styles(settings)
  style = names[zlib.crc32(item["id"].encode()) % len(names)]
  reply, = yield [Ask(PROMPTS.messages(style, passage=item["text"]), settings.temperature, settings.max_new_tokens)]
  text, trail = reply.strip(), [{"style": style}]
  if not text:
    return protocol.rejected("empty", trail)
  if protocol.jaccard(text, item["text"]) >= settings.max_copy:
    return protocol.rejected("copy", trail)
  return protocol.made(protocol.candidate({"text": text}, trail=trail))

"""The one protocol every synthetic dataset type implements (synth/types/), and what types share.

A type is a module registered in synth/types/__init__.py with:

  NAME          its name (--type=NAME, DIR/<NAME>.jsonl)
  SOURCE        the mixture source its accepted tokens count against ("synthetic" or "web_rewrites")
  FIELDS        its own settings (a fields.Group), beside the engine's (synth/engine.py)
  PROMPTS       its prompt file (synth/prompts/<NAME>.txt: a `# version: N` line, then [section]s)
  items(seed, settings) -> [item]
                the work items of one seed record (each a dict with a unique "id" and "seed_id"):
                the seed itself, or its passages
  seed_text(item) -> str
                the item's seed text, which the seed filter scores
  make(item, settings)
                a generator: it yields lists of generator.Ask and receives their replies (strings, in
                order), and returns an outcome: made(candidates) or rejected(reason). The engine runs
                every live item's generator together, so each round's asks across all items go to
                the generator as one batched call.

A candidate is {"record", "checks", "scores", "trail"}: `record` is what the mixture trains on
({"text"} or {"messages"}); `checks` are the slow checks the engine runs after the cheap ones
(format, duplicates, decontamination), cheapest first:
  {"check": "python_tests", "program": CODE, "tests": TESTS}  the tests pass on CODE in the sandbox
  {"check": "oracle", "question": RECORD, "completion": TEXT} posttrain/oracles.check accepts it
`scores` are model-given scores ({name: n}) the score gate reads (engine setting min_score), and
`trail` the rounds that made it (drafts, critiques, verdicts), kept with the record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from importlib import resources

from phi4_jax.data import overlap
from phi4_jax.posttrain.refusal import sections
from phi4_jax.synth.generator import Ask

SHINGLE = 5  # words per shingle of the near-duplicate and copy measures
RETRY_TEMPERATURE = 0.7  # an ask repeated because its reply did not parse samples at least this hot


@dataclasses.dataclass(frozen=True)
class Prompts:
  version: int
  sections: dict[str, str]

  def messages(self, section: str, **values: str) -> tuple[dict, ...]:
    """A one-turn conversation: the section with each {name} replaced by its value."""
    text = self.sections[section]
    for name, value in values.items():
      text = text.replace("{" + name + "}", value)
    return ({"role": "user", "content": text},)


def load_prompts(name: str) -> Prompts:
  """synth/prompts/<name>.txt (package data): its version and sections."""
  text = resources.files("phi4_jax.synth").joinpath("prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")
  version = re.search(r"^# version: (\d+)$", text, flags=re.MULTILINE)
  if version is None:
    raise ValueError(f"synth/prompts/{name}.txt: no '# version: N' line")
  return Prompts(int(version.group(1)), sections(text))


def candidate(record: dict, *, checks: list[dict] | None = None, scores: dict | None = None,
              trail: list | None = None) -> dict:
  return {"record": record, "checks": checks or [], "scores": scores or {}, "trail": trail or []}


def made(*candidates: dict) -> dict:
  return {"candidates": list(candidates)}


def rejected(reason: str, trail: list | None = None) -> dict:
  return {"rejected": reason, "trail": trail or []}


def ask_parsed(ask: Ask, parse, retries: int):
  """(A generator, used with `yield from`.) The value `parse` makes of the first reply it accepts
  (not None) in 1 + retries asks, the retries sampled at >= RETRY_TEMPERATURE so that they can
  differ; (None, the last reply) if none did. Returns (value, reply)."""
  reply = ""
  for attempt in range(retries + 1):
    this = ask if attempt == 0 else dataclasses.replace(ask, temperature=max(ask.temperature, RETRY_TEMPERATURE))
    reply, = yield [this]
    value = parse(reply)
    if value is not None:
      return value, reply
  return None, reply


def parse_scores(reply: str, names: tuple[str, ...], low: int, high: int) -> dict[str, int] | None:
  """{name: score} from a reply with a `name: N` line for each name (any order, other lines
  ignored), every N an integer in [low, high]; None if any is missing or out of range."""
  found = {}
  for line in reply.splitlines():
    m = re.fullmatch(r"\s*[*-]?\s*([A-Za-z][A-Za-z _-]*?)\s*[:=]\s*(\d+)\s*(?:/\s*\d+)?\s*[.]?\s*", line)
    if m:
      key = m.group(1).strip().lower().replace(" ", "_").replace("-", "_")
      if key in names and key not in found:
        found[key] = int(m.group(2))
  if set(found) != set(names) or not all(low <= v <= high for v in found.values()):
    return None
  return found


def labelled(reply: str, labels: tuple[str, ...]) -> dict[str, str] | None:
  """{label: text} of a reply made of `Label: text` blocks (each label once, in this order; a block
  runs to the next label's line); None unless every label has non-empty text."""
  pattern = r"^\s*(" + "|".join(map(re.escape, labels)) + r")\s*:\s*"
  parts = re.split(pattern, reply.strip(), flags=re.MULTILINE | re.IGNORECASE)
  found = {}
  for label, body in zip(parts[1::2], parts[2::2]):
    key = next(x for x in labels if x.lower() == label.lower())
    if key in found:
      return None
    found[key] = body.strip()
  return found if set(found) == set(labels) and all(found.values()) else None


def code_block(reply: str) -> str | None:
  """The first fenced code block of a reply (its body), or the whole reply when it has no fence and
  parses as Python; None otherwise."""
  m = re.search(r"```[a-zA-Z0-9_+-]*\n(.*?)```", reply, flags=re.DOTALL)
  if m:
    return m.group(1).strip("\n") or None
  text = reply.strip()
  try:
    compile(text, "<reply>", "exec")
  except (SyntaxError, ValueError):
    return None
  return text or None


def shingles(words: list[str]) -> set[int]:
  """64-bit hashes of the text's word SHINGLE-grams (the whole text when it is shorter)."""
  grams = [" ".join(words[i:i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))]
  return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams}


def jaccard(a: str, b: str) -> float:
  """|A & B| / |A | B| of the two texts' word 5-gram sets (data/overlap.py's words)."""
  x, y = shingles(overlap.words(a)), shingles(overlap.words(b))
  return len(x & y) / len(x | y)


def passages(text: str, words: int) -> list[str]:
  """The text in passages of about `words` words: paragraphs (blank-line separated) packed in order
  while they fit; a longer paragraph is cut at the word limit."""
  out, current = [], []
  for paragraph in [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]:
    ws = paragraph.split()
    if current and sum(len(p.split()) for p in current) + len(ws) > words:
      out.append("\n\n".join(current))
      current = []
    while len(ws) > words:
      out.append(" ".join(ws[:words]))
      ws = ws[words:]
    if ws:
      current.append(" ".join(ws) if len(ws) < len(paragraph.split()) else paragraph)
  if current:
    out.append("\n\n".join(current))
  return out

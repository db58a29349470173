"""instruction_reversal: seed code -> an instruction for it -> code regenerated from the instruction
alone -> kept only if the regeneration is faithful (the Phi-4 report's instruction reversal).

Seeds: `code` (or `text`), and optionally `tests` (Python asserts). Faithful means: with tests, the
tests pass on the regenerated code in the sandbox (a slow check the engine runs after the cheap
ones: `failed_tests`); without tests, the similarity rule: difflib's ratio between the two codes,
each normalised (comments, blank lines and trailing spaces removed), reaches min_similarity, else
`unfaithful`. An instruction that is empty or a regeneration without code is asked again up to
`retries` times, then `unparsable`. Records store the instruction first: {"messages": [user
instruction, assistant seed code]}; the trail keeps the regenerated code. Counted against `synthetic`.
"""

from __future__ import annotations

import difflib
import io
import tokenize

from phi4_jax import fields
from phi4_jax.synth import protocol, seeds
from phi4_jax.synth.generator import Ask

NAME, SOURCE = "instruction_reversal", "synthetic"
PROMPTS = protocol.load_prompts(NAME)
FIELDS = fields.Group(
    min_similarity=fields.Field(0.6, fields.number(0, 1),
                                "without tests: the normalised codes' difflib ratio must reach this"),
)


def normalised(code: str) -> str:
  """The code without comments, blank lines or trailing spaces (as written, if it does not tokenize)."""
  try:
    kept = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type != tokenize.COMMENT]
    code = tokenize.untokenize(kept)
  except (tokenize.TokenError, IndentationError, SyntaxError):
    pass
  return "\n".join(line.rstrip() for line in code.splitlines() if line.strip())


def similarity(a: str, b: str) -> float:
  return difflib.SequenceMatcher(None, normalised(a), normalised(b), autojunk=False).ratio()


def items(seed: dict, settings) -> list[dict]:
  tests = seed.get("tests") if isinstance(seed.get("tests"), str) else ""
  return [{"id": seed["id"], "seed_id": seed["seed_id"], "code": seeds.field(seed, ("code", "text"), NAME),
           "tests": tests}]


def seed_text(item: dict) -> str:
  """What the seed filter scores."""
  return item["code"]


def make(item: dict, settings):
  code = item["code"]
  ask = Ask(PROMPTS.messages("instruction", code=code), settings.temperature, settings.max_new_tokens)
  instruction, _ = yield from protocol.ask_parsed(ask, lambda r: r.strip() or None, settings.retries)
  if instruction is None:
    return protocol.rejected("unparsable")
  ask = Ask(PROMPTS.messages("regenerate", instruction=instruction), settings.temperature, settings.max_new_tokens)
  regenerated, reply = yield from protocol.ask_parsed(ask, protocol.code_block, settings.retries)
  trail = [{"instruction": instruction, "regenerated": regenerated if regenerated is not None else reply}]
  if regenerated is None:
    return protocol.rejected("unparsable", trail)
  record = {"messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": code}]}
  if item["tests"]:
    check = {"check": "python_tests", "program": regenerated, "tests": item["tests"]}
    return protocol.made(protocol.candidate(record, checks=[check], trail=trail))
  trail[0]["similarity"] = round(similarity(code, regenerated), 4)
  if trail[0]["similarity"] < settings.min_similarity:
    return protocol.rejected("unfaithful", trail)
  return protocol.made(protocol.candidate(record, trail=trail))

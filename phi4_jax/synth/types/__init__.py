"""The synthetic dataset types, by name (synth/protocol.py says what a type is)."""

from phi4_jax.synth.types import (instruction_reversal, multi_agent, qa_extraction, rejection_sampling,
                                  self_revision, web_rewrite)

TYPES = {m.NAME: m for m in (web_rewrite, qa_extraction, self_revision, instruction_reversal, multi_agent,
                             rejection_sampling)}


def get(name: str):
  """The type called `name`; ValueError listing the known ones."""
  if name not in TYPES:
    raise ValueError(f"--type={name!r}: unknown type; known types: {', '.join(TYPES)}")
  return TYPES[name]

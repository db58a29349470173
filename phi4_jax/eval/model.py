"""The model an evaluation runs: params, config and mesh, with text-level generation and scoring."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jax.sharding import Mesh

from phi4_jax import inference
from phi4_jax.model import ModelConfig
from phi4_jax.tokenizer import Phi4Tokenizer

TOKENIZER = Phi4Tokenizer()
STOP_IDS, prompt_ids = TOKENIZER.plain_stops, TOKENIZER.prompt_ids


@dataclasses.dataclass(frozen=True)
class Model:
  params: dict
  cfg: ModelConfig
  mesh: Mesh | None = None

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, until: Sequence[str] = (),
               temperature: float = 0.0, num_samples: int = 1, seed: int = 0, what: str = "prompt") -> list[str]:
    """Decoded continuations (len(prompts) * num_samples, prompt-major), each cut before its first
    stop token and before the first of the `until` strings. The token budget shrinks to what the
    longest prompt leaves of cfg.max_seq_len."""
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    budget = min(max_new_tokens, self.cfg.max_seq_len - len(prompts[longest]))
    if budget < 1:
      raise ValueError(f"{what} {longest}: {len(prompts[longest])} tokens leave no room to generate "
                       f"within the model's max_seq_len {self.cfg.max_seq_len}")
    outs = inference.generate(self.params, self.cfg, [list(p) for p in prompts], max_new_tokens=budget,
                              temperature=temperature, num_samples=num_samples, seed=seed,
                              stop_ids=STOP_IDS, mesh=self.mesh)
    return [cut(TOKENIZER.decode([t for t in ids if t not in STOP_IDS]), until) for ids in outs]

  def score(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
            with_greedy: bool = False) -> list:
    """Per-token log-probs of each completion after its prompt (inference.logprobs; with_greedy:
    with whether each token is the most likely one)."""
    return inference.logprobs(self.params, self.cfg, [list(p) for p in prompts],
                              [list(c) for c in completions], mesh=self.mesh, with_greedy=with_greedy)


def cut(text: str, until: Sequence[str]) -> str:
  """`text` up to the first occurrence of any of `until` (excluded)."""
  end = min([i for i in (text.find(u) for u in until if u) if i >= 0], default=len(text))
  return text[:end]


def chat_prompt(question: str) -> list[int]:
  """One user turn in ChatML with the generation prompt."""
  return prompt_ids({"prompt": question}, chat=True, where="")


def plain_prompt(text: str) -> list[int]:
  """A new document: <|endoftext|> then the text (as packed pretraining rows start)."""
  return prompt_ids({"prompt": text}, chat=False, where="")

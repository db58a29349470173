"""Rollouts: many sampled continuations of (question + prefix) prompts, checked by an oracle.

The sampler side of Pivotal Token Search and the plurality filter. A question record is the
oracles' (`question` or `messages`, `answer` or `tests`, `kind`); its prompt is the ChatML
conversation with a generation prompt. Everything stays token ids: a prefix is never decoded and
re-encoded (only the text the oracle checks is decoded: prefix + continuation, never the prompt).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import zlib
from collections.abc import Sequence

import ml_collections

from phi4_jax import fields
from phi4_jax.posttrain import oracles
from phi4_jax.tokenizer import Phi4Tokenizer

TOKENIZER = Phi4Tokenizer()
STOP_IDS = (TOKENIZER.im_end_id, TOKENIZER.endoftext_id)


SAMPLING = fields.Group(
    num_rollouts=fields.Field(64, fields.integer(1),
                              "continuations sampled per prefix to estimate p(success | prefix)"),
    max_new_tokens=fields.Field(256, fields.integer(1), "tokens per rollout (and per searched solution)"),
    temperature=fields.Field(1.0, fields.number(0, low_open=True), "sampling temperature of the rollouts"),
    top_p=fields.Field(1.0, fields.number(0, 1, low_open=True),
                       "nucleus of the rollouts (1 = the whole distribution)"),
    max_batch=fields.Field(256, fields.integer(1), "rows decoded together (prompts x rollouts)"),
    seed=fields.Field(0, fields.integer(0),
                      "rollouts are a function of (seed, the questions, these settings)"),
)
SAMPLING_RULES = SAMPLING.rules


def sampling_fields() -> ml_collections.ConfigDict:
  return SAMPLING.config()


def question_prompt(record: dict) -> list[int]:
  """The question as a ChatML prompt: its `messages`, or one user turn of its `question`."""
  messages = record.get("messages") or [{"role": "user", "content": record["question"]}]
  return TOKENIZER.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


def content(ids: Sequence[int]) -> list[int]:
  """ids without the stop id that ended them."""
  ids = list(ids)
  return ids[:-1] if ids and ids[-1] in STOP_IDS else ids


@dataclasses.dataclass
class PrefixStats:
  """What the rollouts from one prefix found: successes, and per first token (count, successes)."""

  n: int = 0
  successes: int = 0
  first: dict[int, list[int]] = dataclasses.field(default_factory=dict)

  @property
  def p(self) -> float:
    return self.successes / self.n

  def add(self, first_token: int | None, success: bool) -> None:
    self.n += 1
    self.successes += int(success)
    if first_token is not None:
      counts = self.first.setdefault(first_token, [0, 0])
      counts[0] += 1
      counts[1] += int(success)


class Roller:
  """Samples rollouts from one model and checks them: `estimate([(record, prefix_ids), ...])`."""

  def __init__(self, params, cfg, sampling: ml_collections.ConfigDict, mesh=None):
    self.params, self.cfg, self.sampling, self.mesh = params, cfg, sampling, mesh
    self.rollouts = 0  # sampled so far (for throughput figures)

  def sample(self, prompts: list[list[int]], num_samples: int, sample_ids: list[int]) -> list[list[int]]:
    """num_samples continuations of each prompt (prompt-major); sample s of prompt i is drawn from
    keys of (seed, sample_ids[i], s) alone, whatever else is in the call."""
    from phi4_jax import inference
    s = self.sampling
    self.rollouts += len(prompts) * num_samples
    return inference.generate(self.params, self.cfg, prompts, max_new_tokens=s.max_new_tokens,
                              temperature=s.temperature, top_p=s.top_p, num_samples=num_samples,
                              seed=s.seed, stop_ids=STOP_IDS, mesh=self.mesh, max_batch=s.max_batch,
                              sample_ids=sample_ids)

  def logprobs(self, prompts: list[list[int]], completions: list[list[int]]) -> list:
    """log p(completion token | prompt + completion so far) of each pair (batched)."""
    from phi4_jax import inference
    if not prompts:
      return []
    return inference.logprobs(self.params, self.cfg, prompts, completions, mesh=self.mesh)

  def estimate(self, requests: list[tuple[dict, tuple[int, ...]]]) -> tuple[list[PrefixStats], list[list[list[int]]]]:
    """p(success | question + prefix) for each request from num_rollouts continuations, with their
    first tokens' counts; also the continuations themselves (per request). The draws of a request
    depend on its question id and prefix length, not on the other requests of the call."""
    n = self.sampling.num_rollouts
    keys = sample_keys([(r["id"], len(prefix)) for r, prefix in requests], n)
    outs = self.sample([question_prompt(r) + list(prefix) for r, prefix in requests], n, keys)
    groups = [outs[i * n:(i + 1) * n] for i in range(len(requests))]
    texts = [(r, TOKENIZER.decode(list(prefix) + content(c))) for (r, prefix), group in zip(requests, groups)
             for c in group]
    verdicts = check_all(texts)
    stats = []
    for i, group in enumerate(groups):
      st = PrefixStats()
      for k, c in enumerate(group):
        st.add(c[0] if c else None, verdicts[i * n + k])
      stats.append(st)
    return stats, groups


def check_all(items: list[tuple[dict, str]]) -> list[bool]:
  """oracles.check over (record, completion) pairs; Python ones in parallel sandboxes."""
  if not any(r.get("kind") == "python" for r, _ in items):
    return [oracles.check(r, text) for r, text in items]
  with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
    return list(pool.map(lambda item: oracles.check(*item), items))


def sample_keys(where: list[tuple[str, int]], num_samples: int) -> list[int]:
  """Distinct sampler ids for (question id, prefix length) pairs: a hash below the sampler's
  limit (row ids are int32: id * num_samples + sample), the next free one on a collision."""
  limit = 2**31 // num_samples
  keys, taken = [], set()
  for question_id, length in where:
    key = zlib.crc32(f"{question_id}\0{length}".encode()) % limit
    while key in taken:
      key = (key + 1) % limit
    taken.add(key)
    keys.append(key)
  return keys

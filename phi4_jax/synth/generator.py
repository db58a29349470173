"""Where synthetic text comes from: our sampler on a workdir or an HF folder, or an OpenAI-compatible
endpoint, behind one batched call.

  G = PATH                          a stage's workdir (its latest checkpoint, or --step) or an HF folder
  G = workdir:PATH | hf:PATH        the same, named
  G = http(s)://host:port/v1,model=NAME[,api_key_env=VAR,timeout_s=S,retries=N]
                                    an endpoint (posttrain/openai_http.py: retries, backoff, $OPENAI_API_KEY)

`chat(asks, keys)` answers a whole round of requests: our sampler decodes them in batches of
max_batch rows (grouped by temperature and length; an item's identical asks, e.g. rejection
sampling's n solutions, share one prefill); an endpoint keeps `concurrency` requests in flight.
Each request's sampling key is a hash of its key string (the engine's (seed, type, item, step,
ask)), so a reply does not depend on what else is in the batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib

from phi4_jax.posttrain import rollouts
from phi4_jax.posttrain.openai_http import Endpoint, EndpointError, map_concurrently
from phi4_jax.store import fingerprint


@dataclasses.dataclass(frozen=True)
class Ask:
  """One request to the generator: a conversation, answered by the assistant's next turn."""
  messages: tuple[dict, ...]
  temperature: float = 0.0
  max_tokens: int = 512


def sample_key(key: str) -> int:
  """The sampler's id for a request key (a crc32: the same key always draws the same sample)."""
  return zlib.crc32(key.encode("utf-8")) & 0x7FFFFFFF


def prompt_ids(messages) -> list[int]:
  return rollouts.question_prompt({"messages": list(messages)})


class SamplerGenerator:
  """Our KV-cache sampler on a loaded model."""

  def __init__(self, cfg, params, identity: dict, max_batch: int = 256, top_p: float = 1.0):
    self.cfg, self.params, self.identity, self.max_batch, self.top_p = cfg, params, identity, max_batch, top_p

  def chat(self, asks: list[Ask], keys: list[str]) -> list[str | Exception]:
    """Identical asks whose keys differ only after their last NUL (an item's n samples of one
    request) are one prompt decoded n times: prefilled once, its cache repeated. Sample s of a
    request draws from (its key without the last part, its conversation) and s alone."""
    from phi4_jax import inference
    replies: list[str | Exception] = [""] * len(asks)
    requests: dict[tuple, list[int]] = {}
    for i, (ask, key) in enumerate(zip(asks, keys)):
      requests.setdefault((key.rpartition("\0")[0], json.dumps(ask.messages), ask.temperature, ask.max_tokens),
                          []).append(i)
    groups: dict[tuple, list[tuple]] = {}
    for (prefix, conversation, temperature, max_tokens), members in requests.items():
      groups.setdefault((temperature, max_tokens, len(members)), []).append((prefix, conversation, members))
    for (temperature, max_tokens, n), group in sorted(groups.items()):
      prompts = [prompt_ids(asks[members[0]].messages) for _, _, members in group]
      ids = _distinct([sample_key(f"{prefix}\0{conversation}") for prefix, conversation, _ in group])
      outs = inference.generate(self.params, self.cfg, prompts, max_new_tokens=max_tokens, num_samples=n,
                                temperature=temperature, top_p=self.top_p, seed=0, stop_ids=rollouts.STOP_IDS,
                                max_batch=self.max_batch, sample_ids=ids)
      for r, (_, _, members) in enumerate(group):
        for sample, i in enumerate(members):
          replies[i] = rollouts.TOKENIZER.decode(rollouts.content(outs[r * n + sample]))
    return replies


def _distinct(ids: list[int]) -> list[int]:
  """The sampler wants distinct ids per call; two keys with one hash share a stream, so a repeat
  is moved to a free id derived from it (rare: 2^31 ids)."""
  seen, out = set(), []
  for k in ids:
    while k in seen:
      k = (k * 1_000_003 + 1) & 0x7FFFFFFF
    seen.add(k)
    out.append(k)
  return out


class EndpointGenerator:
  """An OpenAI-compatible chat endpoint; a request that failed past its retries is returned as its
  EndpointError (the engine stops there: nothing of that round is logged)."""

  def __init__(self, spec: str, concurrency: int = 8):
    self.endpoint, self.concurrency = Endpoint.parse(spec), concurrency
    self.identity = {"endpoint": self.endpoint.base_url, "model": self.endpoint.model}

  def chat(self, asks: list[Ask], keys: list[str]) -> list[str | Exception]:
    jobs = list(zip(asks, keys))
    outs = map_concurrently(lambda job: self.endpoint.chat(list(job[0].messages), temperature=job[0].temperature,
                                                           max_tokens=job[0].max_tokens, seed=sample_key(job[1])),
                            jobs, self.concurrency)
    return [o if isinstance(o, str) else o if isinstance(o, EndpointError) else
            EndpointError(f"{self.endpoint.base_url}: {type(o).__name__}: {o}") for o in outs]


def model_path(spec: str) -> str | None:
  """The model folder a generator spec names (None for an endpoint, whose options are checked here);
  ValueError naming the spec when it is neither a readable workdir, an HF folder nor an http(s) URL."""
  if spec.startswith(("http://", "https://")):
    Endpoint.parse(spec)
    return None
  kind, sep, rest = spec.partition(":")
  path = os.path.expanduser(rest if sep and kind in ("workdir", "hf") else spec)
  from phi4_jax.inference.loading import is_hf_dir
  if not os.path.isdir(path):
    raise ValueError(f"--generator={spec!r}: not a directory, and not an http(s):// endpoint "
                     "(expected a workdir, an HF folder or http://host:port/v1,model=NAME)")
  if not (os.path.isdir(os.path.join(path, "checkpoints")) or is_hf_dir(path)):
    raise ValueError(f"--generator={spec!r}: {path} is neither a workdir (no checkpoints/) nor a Hugging Face "
                     "folder (no model.safetensors)")
  if not os.access(path, os.R_OK):
    raise ValueError(f"--generator={spec!r}: {path} is not readable")
  return path


def identity(spec: str, step: int | None = None) -> dict:
  """What the spec names, for provenance and the output's fingerprint: an endpoint and its model, or
  a model folder (a workdir at its step)."""
  path = model_path(spec)
  if path is None:
    e = Endpoint.parse(spec)
    return {"endpoint": e.base_url, "model": e.model}
  return fingerprint.model_identity(path, step)


def load(spec: str, step: int | None = None, *, concurrency: int = 8, max_batch: int = 256, top_p: float = 1.0):
  """The generator a spec names (loads the model of a workdir or HF folder)."""
  path = model_path(spec)
  if path is None:
    if step is not None:
      raise ValueError(f"--step={step}: the generator {spec!r} is an endpoint, which has no steps")
    return EndpointGenerator(spec, concurrency)
  from phi4_jax import inference
  cfg, params = inference.load(path, step)
  return SamplerGenerator(cfg, params, fingerprint.model_identity(path, step), max_batch, top_p)

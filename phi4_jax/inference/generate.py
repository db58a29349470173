"""`generate`: prompts of any lengths -> sampled continuations, through a KV cache.

Prompts are sorted by length and grouped; each group is left-padded to a power-of-two length and
batch size (so a run over many lengths compiles a handful of times), prefilled in one jitted call,
then decoded in one jitted `lax.while_loop` that stops once every row has hit a stop id. With
num_samples > 1 each prompt is prefilled once and its cache repeated for its samples.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi4_jax import model as model_lib
from phi4_jax.inference import batching, decoder
from phi4_jax.inference.sampling import Sampler, row_keys, sample
from phi4_jax.model import ModelConfig
from phi4_jax.tokenizer import Phi4Tokenizer

IM_END_ID = Phi4Tokenizer.im_end_id  # the default stop id: the end of an assistant turn
MIN_COMPACT_ROWS = 32  # batches of fewer rows are never compacted (see _generate_group)


@dataclasses.dataclass(frozen=True)
class Request:
  """Checked arguments of one generate call."""

  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  num_samples: int
  seed: int
  stop_ids: tuple[int, ...]

  @property
  def sampler(self) -> Sampler:
    return Sampler.make(self.temperature, self.top_k, self.top_p)


def check_request(cfg: ModelConfig, max_new_tokens, temperature, top_k, top_p, num_samples, seed,
                  stop_ids) -> Request:
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens: must be a positive int, got {max_new_tokens!r}")
  if not temperature >= 0.0:
    raise ValueError(f"temperature: must be >= 0 (0 = greedy), got {temperature!r}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p: must be in (0, 1], got {top_p!r}")
  if not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"top_k: must be an int >= 0 (0 = no cut), got {top_k!r}")
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples: must be an int >= 1, got {num_samples!r}")
  stop_ids = tuple(int(s) for s in stop_ids)  # (an id outside a small vocabulary never matches)
  return Request(int(max_new_tokens), float(temperature), int(min(top_k, cfg.vocab_size)),
                 float(top_p), int(num_samples), int(seed) % 2**32, stop_ids)


def cache_sharding(cfg: ModelConfig, mesh: Mesh | None) -> NamedSharding | None:
  """KV heads over the mesh's tensor axis where they divide it; everything else replicated."""
  if mesh is None:
    return None
  tensor = mesh.shape["tensor"]
  heads = "tensor" if tensor > 1 and cfg.n_kv_heads % tensor == 0 else None
  return NamedSharding(mesh, PartitionSpec(None, heads, None, None))


def _constrain(cache: tuple, sharding: NamedSharding | None) -> tuple:
  return cache if sharding is None else jax.lax.with_sharding_constraint(cache, sharding)


def _draw(params, cfg, x_BxD, seed, row_ids_B, i, sampler, temperature, top_p) -> jax.Array:
  """Each row's token i from its hidden state, with the row's own key for step i."""
  keys_B = row_keys(seed, row_ids_B, i)
  return decoder.next_tokens(params, cfg, x_BxD, lambda logits, rows: sample(
      logits, keys_B[rows], sampler, temperature, top_p), greedy=sampler.greedy)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len", "num_samples", "sampler", "sharding"))
def _prefill(params, tokens_BxP, pad_B, row_ids_B, seed, temperature, top_p, *, cfg, cache_len,
             num_samples, sampler, sharding):
  """Prefills each prompt once, repeats its last hidden state and cache for its num_samples rows and
  draws every row's first token: (tokens [B * num_samples, cache_len - P + 1] holding it, cache)."""
  batching.note_compile("prefill")
  x_BxD, cache = decoder.prefill(params, cfg, tokens_BxP, pad_B, cache_len)
  repeat = lambda x: jnp.repeat(x, num_samples, axis=0)
  first_B = _draw(params, cfg, repeat(x_BxD), seed, row_ids_B, 0, sampler, temperature, top_p)
  out_BxN = jnp.zeros((first_B.shape[0], cache_len - tokens_BxP.shape[1] + 1), jnp.int32)
  return out_BxN.at[:, 0].set(first_B), _constrain(jax.tree.map(repeat, cache), sharding)


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_len", "sampler", "sharding"),
                   donate_argnames=("cache", "out_BxN"))
def _decode(params, cache, out_BxN, start, done_B, pad_B, row_ids_B, max_new, min_live, seed,
            temperature, top_p, stop_ids, *, cfg, prompt_len, sampler, sharding):
  """Samples tokens start, start + 1, ... into out_BxN until max_new tokens, or until no more than
  min_live rows are still running (0: until every row has produced a stop id).

  Returns (out_BxN, the next token index, the cache, done_B). The cache and tokens are donated and
  returned, so XLA updates them in place.
  """
  batching.note_compile("decode")
  lengths_B = prompt_len - pad_B
  last_B = jax.lax.dynamic_index_in_dim(out_BxN, start - 1, axis=1, keepdims=False)
  done_B = done_B | jnp.isin(last_B, stop_ids)

  def running(carry):
    i, _, _, done = carry
    return (i < max_new) & (jnp.sum(~done) > min_live)

  def one_token(carry):
    i, out_BxN, cache, done_B = carry
    fed_B = jax.lax.dynamic_index_in_dim(out_BxN, i - 1, axis=1, keepdims=False)
    x_BxD, cache = decoder.step(params, cfg, cache, fed_B, lengths_B + i - 1, prompt_len + i - 1, pad_B)
    next_B = _draw(params, cfg, x_BxD, seed, row_ids_B, i, sampler, temperature, top_p)
    out_BxN = jax.lax.dynamic_update_slice(out_BxN, next_B[:, None], (0, i))
    return i + 1, out_BxN, _constrain(cache, sharding), done_B | jnp.isin(next_B, stop_ids)

  i, out_BxN, cache, done_B = jax.lax.while_loop(running, one_token, (start, out_BxN, cache, done_B))
  return out_BxN, i, cache, done_B


@functools.partial(jax.jit, static_argnames=("sharding",))
def _compact(cache, out_BxN, pad_B, row_ids_B, rows_R, *, sharding):
  """The rows rows_R of the cache, tokens, padding and row ids (R < B: the rows still running)."""
  batching.note_compile("compact")
  take = lambda x: jnp.take(x, rows_R, axis=0)
  return _constrain(jax.tree.map(take, cache), sharding), take(out_BxN), take(pad_B), take(row_ids_B)


def _groups(lengths: list[int], per_group: int) -> list[list[int]]:
  """Prompt indices sorted by length, cut into groups of <= per_group sharing a length bucket."""
  groups: list[list[int]] = []
  length_bucket = lambda i: batching.bucket(lengths[i], batching.MIN_PROMPT_BUCKET)
  for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
    if groups and len(groups[-1]) < per_group and length_bucket(groups[-1][0]) == length_bucket(i):
      groups[-1].append(i)
    else:
      groups.append([i])
  return groups


def trim(tokens: np.ndarray, stop_ids: Sequence[int], max_new_tokens: int) -> list[int]:
  """A row's tokens cut after its first stop id (kept) or at max_new_tokens."""
  tokens = [int(t) for t in tokens[:max_new_tokens]]
  for i, t in enumerate(tokens):
    if t in stop_ids:
      return tokens[:i + 1]
  return tokens


def _generate_group(params, cfg, prompts, indices, req: Request, mesh,
                    key_ids: np.ndarray) -> dict[int, list[list[int]]]:
  """{prompt index: its samples' token lists} for one group of prompts.

  Rows that stop early are dropped from the batch: once no more than half of at least
  2 * MIN_COMPACT_ROWS rows are running, the running ones move to a batch of the next power of two
  (draws are keyed by row id, so the tokens are the same as without it).
  """
  group = [prompts[i] for i in indices]
  n = req.num_samples
  batch = batching.bucket(len(group), batching.MIN_BATCH_BUCKET)
  prompt_len = batching.bucket(max(len(p) for p in group), batching.MIN_PROMPT_BUCKET)
  cache_len = batching.bucket(prompt_len + req.max_new_tokens - 1, batching.MIN_PROMPT_BUCKET)
  tokens, pad = batching.left_padded(group, batch, prompt_len)
  sharding = cache_sharding(cfg, mesh)
  row_ids = np.full((batch, n), -1, np.int32)
  row_ids[:len(group)] = key_ids[np.asarray(indices)][:, None] * n + np.arange(n)
  row_ids, pad = row_ids.reshape(-1), np.repeat(pad, n)
  sampling = (np.uint32(req.seed), np.float32(req.temperature or 1.0), np.float32(req.top_p))
  out, cache = _prefill(params, tokens, pad[::n], row_ids, *sampling, cfg=cfg, cache_len=cache_len,
                        num_samples=n, sampler=req.sampler, sharding=sharding)
  rows_of = np.arange(batch * n)  # the group row each batch row holds (-1: a compaction filler)
  done = rows_of >= len(group) * n
  result = np.zeros(out.shape, np.int32)
  i, stop_ids = 1, np.asarray(req.stop_ids or (-1,), np.int32)
  while True:
    min_live = len(rows_of) // 2 if len(rows_of) >= 2 * MIN_COMPACT_ROWS else 0
    out, i, cache, done = _decode(params, cache, out, np.int32(i), done, pad, row_ids,
                                  np.int32(req.max_new_tokens), np.int32(min_live), *sampling,
                                  stop_ids, cfg=cfg, prompt_len=prompt_len, sampler=req.sampler,
                                  sharding=sharding)
    i, done, tokens_BxN = int(i), np.asarray(done), np.asarray(out)
    kept = rows_of >= 0
    result[rows_of[kept]] = tokens_BxN[kept]
    if i >= req.max_new_tokens or done.all():
      break
    running = np.flatnonzero(~done)
    fill = batching.bucket(len(running)) - len(running)
    take = np.concatenate([running, np.full(fill, running[0])])  # fillers repeat a row, done
    cache, out, pad, row_ids = _compact(cache, out, pad, row_ids, take, sharding=sharding)
    rows_of = np.concatenate([rows_of[running], np.full(fill, -1)])
    done = rows_of < 0
  return {i_prompt: [trim(result[row * n + s, :i], req.stop_ids, req.max_new_tokens) for s in range(n)]
          for row, i_prompt in enumerate(indices)}


def generate(params: dict, cfg: ModelConfig, prompts, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: int = 0,
             stop_ids: Sequence[int] = (IM_END_ID,), mesh: Mesh | None = None,
             max_batch: int = 64, sample_ids: Sequence[int] | None = None) -> list[list[int]]:
  """len(prompts) * num_samples lists of generated ids, prompt-major, each cut after its first stop
  id (included) or at max_new_tokens. temperature 0 is greedy; `seed` makes sampling reproducible:
  sample s of prompt i draws from keys of (seed, sample_ids[i], s) alone (sample_ids defaults to
  the prompt indices; pass global ids to get the same samples whatever the batching). max_batch
  bounds the rows decoded together.
  """
  req = check_request(cfg, max_new_tokens, temperature, top_k, top_p, num_samples, seed, stop_ids)
  prompts = batching.check_prompts(prompts, cfg, req.max_new_tokens)
  key_ids = np.arange(len(prompts)) if sample_ids is None else np.asarray(sample_ids, np.int64)
  if key_ids.shape != (len(prompts),) or len(set(key_ids.tolist())) != len(prompts) or (key_ids < 0).any():
    raise ValueError(f"sample_ids: expected {len(prompts)} distinct ints >= 0, one per prompt")
  if mesh is not None:
    params = model_lib.shard_params(params, cfg, mesh)
  params = decoder.split_layers(params)
  results: dict[int, list[list[int]]] = {}
  for indices in _groups([len(p) for p in prompts], max(1, max_batch // req.num_samples)):
    results.update(_generate_group(params, cfg, prompts, indices, req, mesh, key_ids))
  return [sample_ids for i in range(len(prompts)) for sample_ids in results[i]]


@functools.partial(jax.jit, static_argnames=("cfg", "sampler"), donate_argnames=("cache",))
def _stream_step(params, cache, token, position, slot, pad, step, seed, temperature, top_p, *, cfg,
                 sampler):
  batching.note_compile("stream_step")
  x_1xD, cache = decoder.step(params, cfg, cache, token, position, slot, pad)
  keys_1 = row_keys(seed, jnp.zeros((1,), jnp.int32), step)
  return sample(decoder.logits(params, cfg, x_1xD), keys_1, sampler, temperature, top_p), cache


def stream(params: dict, cfg: ModelConfig, prompt: Sequence[int], *, max_new_tokens: int,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
           stop_ids: Sequence[int] = (IM_END_ID,)) -> Iterator[int]:
  """Yields one prompt's generated ids as they are produced (for terminals), the stop id last."""
  req = check_request(cfg, max_new_tokens, temperature, top_k, top_p, 1, seed, stop_ids)
  (ids,) = batching.check_prompts([prompt], cfg, req.max_new_tokens, what="prompt")
  prompt_len = batching.bucket(len(ids), batching.MIN_PROMPT_BUCKET)
  cache_len = batching.bucket(prompt_len + req.max_new_tokens - 1, batching.MIN_PROMPT_BUCKET)
  tokens, pad = batching.left_padded([ids], 1, prompt_len)
  params = decoder.split_layers(params)
  args = (np.uint32(req.seed), np.float32(req.temperature or 1.0), np.float32(req.top_p))
  out, cache = _prefill(params, tokens, pad, np.zeros((1,), np.int32), *args, cfg=cfg,
                        cache_len=cache_len, num_samples=1, sampler=req.sampler, sharding=None)
  token = out[:, 0]
  for i in range(req.max_new_tokens):
    yield int(token[0])
    if int(token[0]) in req.stop_ids or i + 1 == req.max_new_tokens:
      return
    position = np.asarray([len(ids) + i], np.int32)
    token, cache = _stream_step(params, cache, token, position, np.int32(prompt_len + i), pad,
                                np.int32(i + 1), *args, cfg=cfg, sampler=req.sampler)

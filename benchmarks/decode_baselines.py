"""decode_throughput.py's baselines on our weights: transformers' greedy `generate` and Tunix's
sampler (its Llama-3 model, which is our architecture once q/k/v and gate/up are unfused)."""

from __future__ import annotations

import os

NEVER_ID = -2  # a stop id for Tunix that no token has
PAD_ID = -1  # Tunix's pad id: its masks treat tokens equal to it as padding, so no real id may be it


def hf_side(params, cfg, args, tmp: str):
  """transformers' Phi3ForCausalLM from the HF folder of our params, and its greedy generate."""
  import numpy as np
  import torch
  from transformers import Phi3ForCausalLM

  from phi4_jax import hf
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  hf.save(cfg, params, tmp)
  try:
    net = Phi3ForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa")
  except TypeError:  # transformers before `dtype=`
    net = Phi3ForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32, attn_implementation="sdpa")
  net = net.float().eval()
  n = args.new_tokens

  def run(prompts, samples):
    ids = torch.tensor([p for p in prompts for _ in range(samples)], dtype=torch.long)
    with torch.inference_mode():
      out = net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         min_new_tokens=n, do_sample=False, eos_token_id=None, use_cache=True,
                         temperature=None, top_p=None, top_k=None)
    return out[:, ids.shape[1]:].numpy().astype(np.int64)
  return run, {"transformers_attn": net.config._attn_implementation,
               "torch_threads": torch.get_num_threads()}


class IdsTokenizer:
  """What Tunix's Sampler asks of a tokenizer, over prompts written as space-separated token ids."""

  def encode(self, text, **_):
    return [int(t) for t in text.split()]

  def decode(self, ids, **_):
    return " ".join(str(int(t)) for t in ids)

  def bos_id(self):
    return None  # no BOS prepended

  def eos_id(self):
    return NEVER_ID

  def pad_id(self):
    return PAD_ID


def tunix_model(params, cfg):
  """Tunix's Llama3 holding our params (same layouts; see the module docstring)."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from tunix.models.llama3 import model as llama3

  tcfg = llama3.ModelConfig(num_layers=cfg.n_layers, vocab_size=cfg.vocab_size,
                            embed_dim=cfg.d_model, hidden_dim=cfg.d_ff, num_heads=cfg.n_heads,
                            head_dim=cfg.head_dim, num_kv_heads=cfg.n_kv_heads,
                            rope_theta=int(cfg.rope_theta), norm_eps=cfg.norm_eps,
                            shd_config=llama3.ShardingConfig.get_default_sharding(is_sampling=True),
                            weight_tying=False)
  m = llama3.Llama3(tcfg, rngs=nnx.Rngs(0))
  put = lambda var, value: setattr(var, "value", jnp.asarray(np.asarray(value), jnp.float32))
  put(m.embedder.input_embedding, params["embed"]["embedding"])
  put(m.final_norm.w, params["final_norm"]["scale"])
  put(m.lm_head.w, params["lm_head"]["kernel"])
  lp = params["layers"]
  for i, layer in enumerate(m.layers):
    put(layer.input_layernorm.w, lp["attn_norm"]["scale"][i])
    put(layer.post_attention_layernorm.w, lp["mlp_norm"]["scale"][i])
    for name in ("q", "k", "v", "o"):
      put(getattr(layer.attn, f"{name}_proj").w, lp["attn"][name]["kernel"][i])
    for name in ("gate", "up", "down"):
      put(getattr(layer.mlp, f"{name}_proj").kernel, lp["mlp"][name]["kernel"][i])
  return m


def tunix_side(params, cfg, args):
  import numpy as np
  import tunix
  from tunix.generate import sampler as sampler_lib

  m = tunix_model(params, cfg)
  cache = sampler_lib.CacheConfig(cache_size=args.prompt_len + args.new_tokens,
                                  num_layers=cfg.n_layers, num_kv_heads=cfg.n_kv_heads,
                                  head_dim=cfg.head_dim)
  sampler = sampler_lib.Sampler(m, IdsTokenizer(), cache)

  def run(prompts, samples):
    texts = [" ".join(map(str, p)) for p in prompts for _ in range(samples)]
    out = sampler(texts, max_generation_steps=args.new_tokens, max_prompt_length=args.prompt_len,
                  echo=False, eos_tokens=[NEVER_ID], temperature=0.0, seed=0)
    return np.asarray([np.asarray(t)[:args.new_tokens] for t in out.tokens], np.int64)
  version = getattr(tunix, "__version__", None)
  if version is None:
    from importlib import metadata
    version = metadata.version("google-tunix")
  return run, {"tunix": version}


# ------------------------------------------------------------------------------------------------
# Timing, token checks, bandwidth.
# ------------------------------------------------------------------------------------------------

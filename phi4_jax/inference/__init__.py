"""Inference: a KV-cache sampler and teacher-forced scoring, the layer post-training and evaluation call.

    cfg, params = inference.load(workdir_or_hf_dir, step=None)
    outs = inference.generate(params, cfg, prompts, max_new_tokens=64, temperature=0.0, top_k=0,
                              top_p=1.0, num_samples=1, seed=0, stop_ids=(100265,), mesh=None)
    lps = inference.logprobs(params, cfg, prompts, completions, mesh=None)
    for token in inference.stream(params, cfg, prompt, max_new_tokens=64): ...
"""

from phi4_jax.inference.batching import COMPILES
from phi4_jax.inference.generate import generate, stream
from phi4_jax.inference.loading import load
from phi4_jax.inference.scoring import logprobs

__all__ = ["COMPILES", "generate", "load", "logprobs", "stream"]

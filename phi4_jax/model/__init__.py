"""The Phi-4 decoder: `ModelConfig`, `init`, `forward` and sharding helpers."""

from phi4_jax.model.config import ModelConfig, flops_per_token, param_count
from phi4_jax.model.sharding import batch_sharding, make_mesh, param_shardings, shard_params, with_shardings
from phi4_jax.model.transformer import abstract_params, forward, init, logical_axes

__all__ = [
    "ModelConfig", "abstract_params", "batch_sharding", "flops_per_token", "forward", "init",
    "logical_axes", "make_mesh", "param_count", "param_shardings", "shard_params", "with_shardings",
]

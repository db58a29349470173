"""phi4_jax: Microsoft's Phi-4 training recipe in JAX/Flax, from a laptop CPU to a cluster."""

__version__ = "0.1.0"

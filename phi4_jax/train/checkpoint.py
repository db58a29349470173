"""Moved to phi4_jax.store.checkpoint; this name stays an alias of that module for existing imports."""

import sys
import warnings

from phi4_jax.store import checkpoint

warnings.warn("phi4_jax.train.checkpoint moved to phi4_jax.store.checkpoint", DeprecationWarning,
              stacklevel=2)
sys.modules[__name__] = checkpoint

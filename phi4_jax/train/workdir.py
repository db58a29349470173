"""Moved to phi4_jax.store.workdir; this name stays an alias of that module for existing imports."""

import sys
import warnings

from phi4_jax.store import workdir

warnings.warn("phi4_jax.train.workdir moved to phi4_jax.store.workdir", DeprecationWarning,
              stacklevel=2)
sys.modules[__name__] = workdir

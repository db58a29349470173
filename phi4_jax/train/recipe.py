"""Moved to phi4_jax.recipe.runner; this name stays an alias of that module for existing imports."""

import sys
import warnings

from phi4_jax.recipe import runner

warnings.warn("phi4_jax.train.recipe moved to phi4_jax.recipe.runner", DeprecationWarning,
              stacklevel=2)
sys.modules[__name__] = runner

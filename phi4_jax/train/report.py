"""Moved to phi4_jax.recipe.report; this name stays an alias of that module for existing imports."""

import sys
import warnings

from phi4_jax.recipe import report

warnings.warn("phi4_jax.train.report moved to phi4_jax.recipe.report", DeprecationWarning,
              stacklevel=2)
sys.modules[__name__] = report

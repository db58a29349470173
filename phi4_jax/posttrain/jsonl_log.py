"""Moved to phi4_jax.store.jsonl_log; this name stays an alias of that module for existing imports."""

import sys
import warnings

from phi4_jax.store import jsonl_log

warnings.warn("phi4_jax.posttrain.jsonl_log moved to phi4_jax.store.jsonl_log", DeprecationWarning,
              stacklevel=2)
sys.modules[__name__] = jsonl_log

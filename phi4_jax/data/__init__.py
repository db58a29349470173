"""Training data: Table-5 sources, the mixture planner and the grain pipeline.

The trainer calls `make_train_iterator(config, process_index, process_count)`; `check_config`
checks a stage's config.data without reading its files.
"""

from phi4_jax.data.check import check_config
from phi4_jax.data.pipeline import TrainIterator, make_train_iterator, progress_from_state
from phi4_jax.data.planner import Plan, PlanError, make_plan
from phi4_jax.data.sources import CacheError, SourceError

__all__ = ["CacheError", "Plan", "PlanError", "SourceError", "TrainIterator", "check_config",
           "make_plan", "make_train_iterator", "progress_from_state"]

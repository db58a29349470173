"""Training data: Table-5 sources, the mixture planner and the grain pipeline.

The trainer calls `make_train_iterator(config, process_index, process_count)`. Names resolve
lazily, so `python -m phi4_jax.data.plan` runs its module once.
"""

import importlib

_EXPORTS = {"TrainIterator": "pipeline", "make_train_iterator": "pipeline",
            "progress_from_state": "pipeline", "Plan": "plan", "PlanError": "plan",
            "make_plan": "plan"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

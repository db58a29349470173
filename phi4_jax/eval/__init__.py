"""Evaluation: HumanEval by execution, answer tasks, multiple choice and perplexity per source,
and an lm-evaluation-harness model (phi4_jax.eval.lm_eval).

  python -m phi4_jax.eval --workdir=W [--step=N] --eval.tasks=humaneval,answers,choice,perplexity
                          [--eval.limit=N] [--out=results.json]

    results = eval.evaluate(eval.Model(params, cfg), eval.eval_fields(tasks="answers", limit=64))

`config.eval` (eval_fields) runs the same tasks during training every `every` steps. The settings
import nothing heavy (stage configs use them); the tasks load on first use.
"""

from phi4_jax.eval.settings import RULES, TASK_NAMES, eval_fields, task_names

_LAZY = {"Model": "phi4_jax.eval.model", "TASKS": "phi4_jax.eval.tasks", "evaluate": "phi4_jax.eval.tasks",
         "flat": "phi4_jax.eval.tasks", "table": "phi4_jax.eval.tasks"}
__all__ = ["RULES", "TASK_NAMES", "eval_fields", "task_names", *_LAZY]


def __getattr__(name: str):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'phi4_jax.eval' has no attribute {name!r}")

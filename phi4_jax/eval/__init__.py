"""Evaluation: HumanEval by execution, answer tasks, multiple choice and perplexity per source,
and an lm-evaluation-harness model (phi4_jax.eval.lm_eval).

  python -m phi4_jax.eval --workdir=W [--step=N] --tasks=humaneval,answers,choice,perplexity
                          [--limit=N] [--out=results.json]

    results = eval.evaluate(eval.Model(params, cfg), eval.eval_fields(tasks="answers", limit=64))

`config.eval` (eval_fields) runs the same tasks during training every `every` steps.
"""

from phi4_jax.eval.model import Model
from phi4_jax.eval.tasks import RULES, TASKS, eval_fields, evaluate, flat, table, task_names

__all__ = ["Model", "RULES", "TASKS", "eval_fields", "evaluate", "flat", "table", "task_names"]

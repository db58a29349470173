"""The evaluation tasks and the runner that evaluates a model on several of them."""

from __future__ import annotations

import time

from phi4_jax.eval import answers, choice, humaneval, perplexity, settings as settings_lib
from phi4_jax.eval.model import Model

TASKS = {
    "humaneval": humaneval.run,  # pass@k by execution in the sandbox
    "answers": answers.run,  # final-answer accuracy on answers_file
    "choice": choice.run,  # multiple choice by log-likelihood on choice_file
    "perplexity": perplexity.run,  # loss and bits per byte per source of perplexity_config
}
assert tuple(TASKS) == settings_lib.TASK_NAMES


def evaluate(model: Model, settings, prefix: str = "eval", samples: dict | None = None) -> dict[str, dict]:
  """{task: its metrics (and "seconds")} for every task of settings.tasks; `samples`, if given,
  gets {task: one record per item} (as lm-eval's --log_samples: the item, the model's output, what
  was extracted or scored, the verdict) of the tasks that score items (not perplexity)."""
  names = settings_lib.check(settings, prefix)
  if not names:
    raise ValueError(f"{prefix}.tasks: no tasks given (known: {', '.join(TASKS)})")
  results = {}
  for name in names:
    start = time.monotonic()
    metrics = TASKS[name](model, settings)
    items = metrics.pop("samples", None)
    if samples is not None and items is not None:
      samples[name] = items
    results[name] = {**metrics, "seconds": round(time.monotonic() - start, 2)}
  return results


def flat(results: dict, prefix: str = "eval") -> dict[str, float]:
  """{"eval/answers/acc": 0.4, "eval/perplexity/web/loss": 3.1, ...}: metric rows' form."""
  out = {}
  def walk(node, path):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{path}/{k}")
      elif k != "seconds":
        out[f"{path}/{k}"] = v
  walk(results, prefix)
  return out


def table(results: dict) -> str:
  """One line per metric: task, metric, value."""
  rows = [(key.split("/", 2)[1], key.split("/", 2)[2], value) for key, value in flat(results).items()]
  width = max(len(r[1]) for r in rows)
  lines = [f"{'task':<11} {'metric':<{width}} value"]
  for task, metric, value in rows:
    lines.append(f"{task:<11} {metric:<{width}} {value:.4f}" if isinstance(value, float)
                 else f"{task:<11} {metric:<{width}} {value}")
  for task, r in results.items():
    lines.append(f"{task:<11} {'seconds':<{width}} {r['seconds']:.1f}")
  return "\n".join(lines)

"""The evaluation tasks, their settings (one ConfigDict for the command and for config.eval), and
the runner that evaluates a model on several of them."""

from __future__ import annotations

import time

import ml_collections

from phi4_jax import fields
from phi4_jax.eval import answers, choice, humaneval, perplexity
from phi4_jax.eval.model import Model

TASKS = {
    "humaneval": humaneval.run,  # pass@k by execution in the sandbox
    "answers": answers.run,  # final-answer accuracy on answers_file
    "choice": choice.run,  # multiple choice by log-likelihood on choice_file
    "perplexity": perplexity.run,  # loss and bits per byte per source of perplexity_config
}


def eval_fields(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tasks = ""  # comma-separated task names: humaneval, answers, choice, perplexity
  c.every = 0  # (config.eval in training) evaluate every this many steps and at the last; 0 = never
  c.limit = 0  # items per task (problems, questions, documents per source); 0 = all (perplexity: 8)
  c.max_new_tokens = 256  # generation budget per item (humaneval, answers)
  c.temperature = 0.0  # humaneval sampling temperature; 0 = greedy
  c.num_samples = 1  # humaneval samples per problem (pass@k for k <= this)
  c.seed = 0  # humaneval sampling seed
  c.timeout_s = 10.0  # humaneval: wall-clock limit per program in the sandbox
  c.template = "chat"  # answers and choice prompts: chat (a ChatML user turn) | plain (Question/Answer)
  c.answers_file = "embedded:exercises"  # JSONL {question, answer}; or embedded:exercises | embedded:parity
  c.choice_file = "embedded:exercises"  # JSONL {question, choices, answer}; or embedded:exercises
  c.perplexity_config = "experiments/pretrain.py:colab"  # the stage config whose sources are scored
  c.update(overrides)
  return c


RULES = {"tasks": fields.string(), "every": fields.integer(0), "limit": fields.integer(0),
         "max_new_tokens": fields.integer(1), "temperature": fields.number(0), "num_samples": fields.integer(1),
         "seed": fields.integer(0), "timeout_s": fields.number(0, low_open=True),
         "template": fields.choice(answers.TEMPLATES), "answers_file": fields.string(),
         "choice_file": fields.string(), "perplexity_config": fields.string()}


def task_names(settings, field: str = "tasks") -> list[str]:
  """The settings' task names, checked (an unknown one is an error listing the known ones)."""
  names = [t.strip() for t in settings.tasks.split(",") if t.strip()]
  for name in names:
    if name not in TASKS:
      raise ValueError(f"{field}: unknown task {name!r} (known: {', '.join(TASKS)})")
  return names


def evaluate(model: Model, settings, prefix: str = "eval") -> dict[str, dict]:
  """{task: its metrics (and "seconds")} for every task of settings.tasks."""
  fields.unknown(settings.keys(), eval_fields().keys(), prefix)
  fields.check(settings, RULES, prefix)
  names = task_names(settings, f"{prefix}.tasks")
  if not names:
    raise ValueError(f"{prefix}.tasks: no tasks given (known: {', '.join(TASKS)})")
  results = {}
  for name in names:
    start = time.monotonic()
    results[name] = {**TASKS[name](model, settings), "seconds": round(time.monotonic() - start, 2)}
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

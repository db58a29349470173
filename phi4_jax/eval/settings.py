"""Evaluation settings: one ConfigDict for `python -m phi4_jax.eval` and for a stage's config.eval.
(No model imports here: stage configs import it.)"""

from __future__ import annotations

import ml_collections

from phi4_jax import fields

TASK_NAMES = ("humaneval", "answers", "choice", "perplexity")
TEMPLATES = ("chat", "plain")


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
  c.perplexity_tokens = 2048  # tokens scored per document (its first ones); 0 = the model's context
  c.update(overrides)
  return c


RULES = {"tasks": fields.string(), "every": fields.integer(0), "limit": fields.integer(0),
         "max_new_tokens": fields.integer(1), "temperature": fields.number(0), "num_samples": fields.integer(1),
         "seed": fields.integer(0), "timeout_s": fields.number(0, low_open=True),
         "template": fields.choice(TEMPLATES), "answers_file": fields.string(),
         "choice_file": fields.string(), "perplexity_config": fields.string(),
         "perplexity_tokens": fields.integer(0)}


def task_names(settings, field: str = "eval.tasks") -> list[str]:
  """The settings' task names, checked (an unknown one is an error listing the known ones)."""
  names = [t.strip() for t in settings.tasks.split(",") if t.strip()]
  for name in names:
    if name not in TASK_NAMES:
      raise ValueError(f"{field}: unknown task {name!r} (known: {', '.join(TASK_NAMES)})")
  return names


def check(settings, prefix: str = "eval") -> list[str]:
  """Refuses unknown fields and bad values (naming prefix.field); returns the task names."""
  fields.unknown(settings.keys(), eval_fields().keys(), prefix)
  fields.check(settings, RULES, prefix)
  return task_names(settings, f"{prefix}.tasks")

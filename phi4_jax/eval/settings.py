"""Evaluation settings: one ConfigDict for `python -m phi4_jax.eval` and for a stage's config.eval.
(No model imports here: stage configs import it.)"""

from __future__ import annotations

import ml_collections

from phi4_jax import fields

TASK_NAMES = ("humaneval", "answers", "choice", "perplexity")
TEMPLATES = ("chat", "plain")


F = fields.Field
FIELDS = fields.Group(
    tasks=F("", fields.string(), "comma-separated task names: humaneval, answers, choice, perplexity"),
    every=F(0, fields.integer(0),
            "(config.eval in training) evaluate every this many steps and at the last; 0 = never"),
    limit=F(0, fields.integer(0),
            "items per task (problems, questions, documents per source); 0 = all (perplexity: 8)"),
    max_new_tokens=F(256, fields.integer(1), "generation budget per item (humaneval, answers)"),
    temperature=F(0.0, fields.number(0), "humaneval sampling temperature; 0 = greedy"),
    num_samples=F(1, fields.integer(1), "humaneval samples per problem (pass@k for k <= this)"),
    seed=F(0, fields.integer(0), "humaneval sampling seed"),
    timeout_s=F(10.0, fields.number(0, low_open=True),
                "humaneval: wall-clock limit per program in the sandbox"),
    template=F("chat", fields.choice(TEMPLATES),
               "answers and choice prompts: chat (a ChatML user turn) | plain (Question/Answer)"),
    answers_file=F("embedded:exercises", fields.string(),
                   "JSONL {question, answer}; or embedded:exercises | embedded:parity"),
    choice_file=F("embedded:exercises", fields.string(),
                  "JSONL {question, choices, answer}; or embedded:exercises"),
    perplexity_config=F("experiments/pretrain.py:colab", fields.string(),
                        "the stage config whose sources are scored"),
    perplexity_tokens=F(2048, fields.integer(0),
                        "tokens scored per document (its first ones); 0 = the model's context"),
)
RULES = FIELDS.rules


def eval_fields(**overrides) -> ml_collections.ConfigDict:
  return FIELDS.config(**overrides)


def task_names(settings, field: str = "eval.tasks") -> list[str]:
  """The settings' task names, checked (an unknown one is an error listing the known ones)."""
  names = [t.strip() for t in settings.tasks.split(",") if t.strip()]
  for name in names:
    if name not in TASK_NAMES:
      raise ValueError(f"{field}: unknown task {name!r} (known: {', '.join(TASK_NAMES)})")
  return names


def check(settings, prefix: str = "eval") -> list[str]:
  """Refuses unknown fields and bad values (naming prefix.field); returns the task names."""
  FIELDS.check(settings, prefix)
  return task_names(settings, f"{prefix}.tasks")

"""Prints a stage's data plan: each source's fraction, unique tokens, tokens and epochs.

  python -m phi4_jax.data.plan --config=experiments/pretrain.py:phi4_14b [--json]

Sources whose `unique_tokens` is 0 are measured (once, cached); the planner is planner.py.
"""

from __future__ import annotations

import json

from absl import app, flags

from phi4_jax import configs
from phi4_jax.data import measure
from phi4_jax.data.check import check_config
from phi4_jax.data.planner import make_plan


def main(argv) -> None:
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  try:
    check_config(config, files=False)  # a declared plan needs no files (measuring opens them)
    plan = make_plan(config, measure.unique_tokens(config))
  except ValueError as e:  # PlanError, or a config.data field or a source's files
    raise SystemExit(f"plan refused: {e}") from None
  print(json.dumps(plan.to_dict(), indent=1) if flags.FLAGS.json else plan.table())


if __name__ == "__main__":  # flags only here: importing this module defines none
  configs.define_flag()
  flags.DEFINE_bool("json", False, "print the plan as JSON instead of a table")
  flags.mark_flag_as_required("config")
  app.run(main)

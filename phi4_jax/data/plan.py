"""Prints a stage's data plan: each source's fraction, unique tokens, tokens and epochs.

  python -m phi4_jax.data.plan --config=experiments/pretrain.py:phi4_14b [--json]

Sources whose `unique_tokens` is 0 are measured (once, cached); the planner is planner.py.
"""

from __future__ import annotations

import json
import sys

from phi4_jax import flags
from phi4_jax.data import measure
from phi4_jax.data.check import check_config
from phi4_jax.data.planner import make_plan


def main(argv=None) -> None:
  p = flags.Parser("python -m phi4_jax.data.plan", __doc__)
  flags.add_config_flag(p)
  flags.add_bool(p, "--json", False, "print the plan as JSON instead of a table")
  config, args = flags.command_line(p, argv)
  try:
    check_config(config, files=False)  # a declared plan needs no files (measuring opens them)
    plan = make_plan(config, measure.unique_tokens(config))
  except ValueError as e:  # PlanError, or a config.data field or a source's files
    raise SystemExit(f"plan refused: {e}") from None
  print(json.dumps(plan.to_dict(), indent=1) if args.json else plan.table())


if __name__ == "__main__":
  main()

"""python -m phi4_jax.eval --workdir=W --eval.tasks=a,b [--eval.limit=N] [--out=results.json]: evaluate a
checkpoint of any stage (or --hf_dir) on tasks and print a table (phi4_jax/eval/__init__.py)."""

from __future__ import annotations

import json
import sys

from phi4_jax import flags
from phi4_jax.eval.settings import FIELDS, eval_fields, task_names
from phi4_jax.eval.tasks import TASKS, evaluate, table


def main(argv=None) -> dict:
  p = flags.Parser("python -m phi4_jax.eval", __doc__)
  flags.add_model_flags(p)
  p.add_argument("--out", default="", help="also write the results here as JSON")
  defaults = FIELDS.without("every")  # a training-only field
  flags.add_settings_flags(p, defaults, group="eval")  # (a stage's config.eval.<name>)
  args = p.parse_args(argv)
  if not args.tasks:
    p.error(f"--eval.tasks: give comma-separated task names (known: {', '.join(TASKS)})")
  settings = eval_fields(**flags.settings(args, defaults).to_dict())
  task_names(settings, "--eval.tasks")  # before the model loads
  from phi4_jax import inference
  from phi4_jax.eval.model import Model
  cfg, params = inference.load(args.workdir or args.hf_dir, args.step)
  results = evaluate(Model(params, cfg), settings)
  print(table(results))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"model": args.workdir or args.hf_dir, "step": args.step, "results": results}, f, indent=1)
  return results


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")

"""python -m phi4_jax.eval --workdir=W --eval.tasks=a,b [--eval.limit=N] [--out=results.json]: evaluate a
checkpoint of any stage (or --hf_dir) on tasks and print a table (phi4_jax/eval/__init__.py)."""

from __future__ import annotations

import os
import sys

from phi4_jax import flags
from phi4_jax.eval import answers, choice
from phi4_jax.store import atomic, checkpoint, jsonl_log
from phi4_jax.eval.settings import FIELDS, eval_fields, task_names
from phi4_jax.eval.tasks import TASKS, evaluate, table


def main(argv=None) -> dict:
  p = flags.Parser("python -m phi4_jax.eval", __doc__)
  flags.add_model_flags(p)
  p.add_argument("--out", default="", help="also write the results here as JSON, and one line per item "
                 "(prompt, output, extracted answer, verdict) to OUT's name with .samples.jsonl")
  defaults = FIELDS.without("every")  # a training-only field
  flags.add_settings_flags(p, defaults, group="eval")  # (a stage's config.eval.<name>)
  args = p.parse_args(argv)
  if not args.tasks:
    p.error(f"--eval.tasks: give comma-separated task names (known: {', '.join(TASKS)})")
  settings = eval_fields(**flags.settings(args, defaults).to_dict())
  check_inputs(settings, args.out)  # (before the model loads)
  from phi4_jax import inference
  from phi4_jax.eval.model import Model
  step = args.step if args.step is not None or not args.workdir else checkpoint.latest_step(args.workdir)
  cfg, params = inference.load(args.workdir or args.hf_dir, step)
  samples = {}
  results = evaluate(Model(params, cfg), settings, samples=samples)
  print(table(results))
  if args.out:
    atomic.write_json(args.out, {"model": args.workdir or args.hf_dir, "step": step, "results": results})
    jsonl_log.write_atomic(samples_path(args.out), [{"task": task, **record} for task, records in samples.items()
                                                    for record in records])
  return results


def samples_path(out: str) -> str:
  """Where --out's per-item records go: results.json -> results.samples.jsonl."""
  return f"{out[:-5] if out.endswith('.json') else out}.samples.jsonl"


def check_inputs(settings, out: str) -> None:
  """The task names, the answer and choice files' items, and --out's folder, before a model loads."""
  names = task_names(settings, "--eval.tasks")
  if "answers" in names:
    answers.read(settings)
  if "choice" in names:
    choice.read(settings)
  folder = os.path.dirname(os.path.abspath(out)) if out else ""
  if out and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
    raise ValueError(f"--out={out}: {folder} is not a folder this process can write to")


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")

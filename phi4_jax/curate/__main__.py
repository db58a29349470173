"""Curates corpora: heuristic filters, deduplication, a quality classifier and decontamination.

  python -m phi4_jax.curate --input=GLOB | --sources=FILE.py:PRESET --out=DIR \\
      [--steps=filter,dedup,classify,decontam] [--ray_address=auto|HOST:PORT] [--config.<group>.<field>=v]
  python -m phi4_jax.curate annotate --input=GLOB | --sources=... --judge=rule|G --out=DIR [--config.<field>=v]
  python -m phi4_jax.curate train --annotations=DIR/annotations.jsonl --out=CLASSIFIER_DIR [--config.<field>=v]

The run writes DIR/<source>/<file> (clean copies in each file's format), DIR/<source>/<file>.report.jsonl
(what removed each document and why), DIR/summary.json and, with classify, DIR/scores.png
(curate/pipeline.py). Groups: filter (curate/filters.py), dedup (curate/dedup.py), classify
(classifier, threshold), decontam (benchmarks and data/overlap.py's ratios). A rerun resumes;
--overwrite starts a changed run over.
"""

from __future__ import annotations

import json
import os
import sys

from phi4_jax import flags
from phi4_jax.curate import documents, pipeline, settings
from phi4_jax.store import fingerprint


def _inputs(p: flags.Parser) -> None:
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--input", default="", help="documents to curate: comma-separated globs (one source, `input`)")
  which.add_argument("--sources", default="", metavar="FILE.py:PRESET", help="a stage config: its data sources")


def parse(argv: list[str]):
  p = flags.Parser("python -m phi4_jax.curate", __doc__)
  _inputs(p)
  p.add_argument("--out", required=True, help="the output folder")
  p.add_argument("--steps", default=None, help="comma-separated, of filter, dedup, classify, decontam")
  p.add_argument("--ray_address", default="", help="run on this Ray cluster (auto, or HOST:PORT)")
  flags.add_overwrite_flag(p)
  args, rest = p.parse_known_args(argv)
  config = settings.config()
  rest = flags.apply_overrides(config, rest)
  if rest:
    raise flags.UsageError(f"unrecognized arguments: {' '.join(rest)}")
  if args.steps is not None:
    config.steps = args.steps
  settings.check(config)
  pipeline.steps_of(config)
  return config, args


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] in ("annotate", "train"):
    from phi4_jax.curate import commands
    return getattr(commands, argv[0])(argv[1:])
  try:
    config, args = parse(argv)
  except flags.UsageError as e:
    sys.exit(f"error: {e}")
  leaves = documents.leaves_of(args.input, args.sources)
  cache = config.cache_dir or f"{args.out}/cache"
  files = documents.files_of(leaves)
  fingerprint.refuse_input_as_output(args.out, {f"{f.source} file": f.path for f in files})
  made = [os.path.join(args.out, name) for name in (pipeline.WORK, "summary.json", "scores.png",
                                                   *sorted({f.source.split("/")[0] for f in files}))]
  fingerprint.claim(args.out, {"sources": documents.config_identity(leaves), "config": config.to_dict()},
                    made, args.overwrite, folder=True)
  runner = None
  if args.ray_address:
    from phi4_jax.curate import ray_runner
    runner = ray_runner.Ray(args.ray_address)
  summary = pipeline.run(config, files, args.out, cache, runner=runner)
  print(json.dumps(summary["total"]))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")

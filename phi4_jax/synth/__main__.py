"""Makes synthetic data: one dataset type, or a pipeline of several, from a generator.

  python -m phi4_jax.synth --type=NAME --seeds=GLOB --generator=G --out=DIR [--benchmarks=SPEC]
      [--target_tokens=N] [--num_seeds=N] [--plan=experiments/pretrain.py:phi4_14b] [--config.<field>=v]
  python -m phi4_jax.synth --pipeline=experiments/synth.py:<preset> --generator=G --out=DIR
      [--config.<type>.<field>=v]

G is a stage's workdir (with --step), an HF folder, or http://host:port/v1,model=NAME
(synth/generator.py). Types: web_rewrite, qa_extraction, self_revision, instruction_reversal,
multi_agent, rejection_sampling (synth/types/). Output: DIR/<type>.jsonl (the records the mixture
trains on: `text`, or `messages` for chat data, with their provenance), DIR/summary.json and the
printed table (synth/pipeline.py). A rerun resumes; --overwrite starts a changed run over.
"""

from __future__ import annotations

import json
import sys

from phi4_jax import configs, flags
from phi4_jax.posttrain.openai_http import EndpointError
from phi4_jax.synth import engine, generator, pipeline, types

PIPELINE_KEYS = ("types", "benchmarks", "plan")


def _parser(type_name: str | None) -> flags.Parser:
  p = flags.Parser("python -m phi4_jax.synth", __doc__)
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--type", help=f"one dataset type: {', '.join(types.TYPES)}")
  which.add_argument("--pipeline", metavar="FILE.py:PRESET", help="a pipeline preset (experiments/synth.py)")
  p.add_argument("--generator", required=True, help="a workdir, an HF folder or http(s)://URL,model=NAME")
  p.add_argument("--step", type=int, default=None, help="the workdir's checkpoint step (default: its latest)")
  p.add_argument("--out", required=True, help="the output folder")
  p.add_argument("--seeds", default="", help="seed files, comma-separated globs (with --type)")
  p.add_argument("--benchmarks", default=None, help="decontaminate against these (data/decontam.py's --benchmarks)")
  p.add_argument("--plan", default=None, help="count the tokens against this stage config's mixture")
  flags.add_overwrite_flag(p)
  flags.add_distributed_flags(p)
  if type_name in types.TYPES:
    flags.add_settings_flags(p, engine.settings_group(types.TYPES[type_name]), group="config",
                             synonyms=("target_tokens", "num_seeds"))  # (--target_tokens=N: --config.target_tokens=N)
  return p


def parse(argv: list[str]):
  """(the pipeline config, the flags)."""
  first, _ = _parser(None).parse_known_args(argv) if "--help" not in argv and "-h" not in argv else (None, None)
  type_name = first.type if first else None
  if type_name is not None:
    types.get(type_name)  # (an unknown type's error lists the known ones)
  p = _parser(type_name)
  if type_name is None:
    args, overrides = p.parse_known_args(argv)
    if args.seeds:
      raise flags.UsageError("--seeds: give each type's seeds in the pipeline (--config.<type>.seeds=GLOB)")
    config = configs.parse_args([f"--{configs.FLAG}={args.pipeline}", *overrides])
  else:
    args = p.parse_args(argv)
    if not args.seeds:
      raise flags.UsageError("--seeds: required with --type")
    settings = flags.settings(args, engine.settings_group(types.TYPES[type_name]))
    config = pipeline.pipeline({type_name: pipeline.entry(type_name, args.seeds, **settings)})
  with config.unlocked():
    if args.benchmarks is not None:
      config.benchmarks = args.benchmarks
    if args.plan is not None:
      config.plan = args.plan
  pipeline.check(config)
  return config, args


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  try:
    config, args = parse(argv)
  except flags.UsageError as e:
    sys.exit(f"error: {e}")
  identity = generator.identity(args.generator, args.step)  # (checks the spec before a model loads)
  import jax

  from phi4_jax import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  source = generator.load(args.generator, args.step, concurrency=config[config.types[0]].concurrency,
                          max_batch=config[config.types[0]].max_batch, top_p=config[config.types[0]].top_p)
  summary = pipeline.run(config, source, identity, args.out, args.overwrite, jax.process_index(),
                         jax.process_count())
  if jax.process_index() == 0:
    print(pipeline.table(summary))
    print(json.dumps({name: {k: s[k] for k in ("accepted", "unique_tokens", "reached_target")}
                      for name, s in summary["types"].items()}))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError, EndpointError) as e:
    sys.exit(f"error: {e}")

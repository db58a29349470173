"""`python -m phi4_jax.main --config=experiments/<stage>.py:<preset> --workdir=W` (or `phi4-jax`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import ml_collections

from phi4_jax import flags, hugepages


def parser() -> flags.Parser:
  """--config with its overrides, and the flags of a run."""
  p = flags.Parser("python -m phi4_jax.main", __doc__)
  flags.add_config_flag(p)
  p.add_argument("--workdir", help="run directory: checkpoints, metrics, TensorBoard")
  flags.add_distributed_flags(p)
  flags.add_bool(p, "--dry_run", False, "compile each training stage's step on abstract inputs and "
                 "print its per-device memory and FLOP plan; trains nothing, writes nothing")
  p.add_argument("--devices", type=int, default=0, help="with --dry_run: plan for this many devices "
                 "(fake CPU ones where no accelerator is present)")
  p.add_argument("--device_memory_gb", type=float, default=0.0, help="with --dry_run: check the plan "
                 "against this memory per device (0: a table of H100, H200, A100, TPU v5e/v5p/v6e)")
  return p


def parse_args(argv) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
  """(the config, the other flags) as a run parses them; launch/job.py checks a job's flags with
  it. Raises ValueError naming the flag."""
  return flags.parse_with_config(parser(), argv)


class _QuietLibraries(logging.Filter):
  """INFO lines of our own code pass; the libraries' (orbax logs every save) only from WARNING."""

  _PATHS = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "grain", "jax", "etils"))

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(p in record.pathname for p in self._PATHS)


def main(config: ml_collections.ConfigDict, args: argparse.Namespace) -> None:
  logging.basicConfig(level=logging.INFO, format="%(levelname).1s%(asctime)s %(filename)s:%(lineno)d] "
                      "%(message)s", datefmt="%m%d %H:%M:%S")
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  if args.dry_run:
    _dry_run(config, args.devices, args.device_memory_gb)
    return
  if not args.workdir:
    sys.exit("error: --workdir is required (except with --dry_run)")
  import jax  # (after the hugepages re-exec)

  from phi4_jax import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  with distributed.failing_fast():
    _run(config, args)


def _run(config: ml_collections.ConfigDict, args: argparse.Namespace) -> None:
  """The recipe or stage of `config` in args.workdir (after jax.distributed.initialize)."""
  import jax

  from phi4_jax.recipe import runner as recipe  # (these after jax.distributed.initialize)
  from phi4_jax.store import workdir
  from phi4_jax.train import recovery
  try:
    path = workdir.resolve(args.workdir)
  except ValueError as e:
    sys.exit(f"error: {e}")
  try:
    recipe.check(config, path)  # (nothing is written before every stage's config passed)
  except (ValueError, FileNotFoundError) as e:  # what the checks raise, each naming its field
    sys.exit(f"error: {e}")
  from phi4_jax.data import SourceError
  from phi4_jax.data.formats import CacheError
  from phi4_jax.posttrain.openai_http import EndpointError
  from phi4_jax.store.fingerprint import FingerprintError
  user_errors = (SourceError, CacheError, workdir.WorkdirError, FingerprintError, EndpointError)
  try:
    with workdir.locked(path, jax.process_index(), jax.process_count()):
      recipe.run(config, path, checked=True)
  except user_errors as e:  # a bad data file, cache, workdir or stage output, or a failed endpoint
    sys.exit(f"error: {e}")
  except recovery.CheckpointError as e:
    # The last line says what failed. A failed async save leaves orbax coroutines that Python
    # would report, one traceback each, while shutting down; skip that shutdown.
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


def _dry_run(config, devices: int, device_memory_gb: float) -> None:
  """Prints each training stage's plan (train/dry_run.py)."""
  import jax
  if devices:
    jax.config.update("jax_num_cpu_devices", devices)  # (before the first backend is opened)
    if jax.default_backend() != "cpu" and jax.device_count() != devices:
      sys.exit(f"error: --devices={devices}: this machine has {jax.device_count()} "
                           f"{jax.default_backend()} devices; fake devices are CPU ones (set "
                           "JAX_PLATFORMS=cpu to plan on them)")
  from phi4_jax.recipe import runner as recipe
  from phi4_jax.recipe.stages import kind_of
  from phi4_jax.train import dry_run
  if "stages" in config:
    try:
      recipe.link(config, "<workdir>")  # (init_from and `stage:` sources, as a run would set them)
    except ValueError as e:  # (a `stage:` source naming no earlier data stage)
      sys.exit(f"error: {e}")
  for name, stage, _ in recipe.stage_dirs(config, ""):
    if not kind_of(stage).makes_model:  # (a data stage compiles no train step)
      continue
    try:
      print(dry_run.describe(dry_run.plan(stage, device_memory_gb)), flush=True)
    except ValueError as e:  # (a config field, or a mesh the arrays cannot be split over)
      sys.exit(f"error: {f'stage {name}: ' if name else ''}{e}")


def run(argv=None) -> None:
  hugepages.reexec_with_hugepages()
  main(*flags.command_line(parser(), argv))


if __name__ == "__main__":
  run()

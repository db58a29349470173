"""`python -m phi4_jax.main --config=experiments/<stage>.py:<preset> --workdir=W` (or `phi4-jax`)."""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from phi4_jax import configs, hugepages

_FLAGS: dict[str, flags.FlagHolder] = {}  # defined by run()


def define_run_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  """The flags besides --config (configs.define_flag); launch/job.py checks a job's flags with
  configs.parse_args(args, define_run_flags), the parsing run() does."""
  return {
      "workdir": flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, "
                                     "TensorBoard", flag_values=flag_values),
      "coordinator_address": flags.DEFINE_string("coordinator_address", "", "host:port of process 0 "
                                                 "(multi-process)", flag_values=flag_values),
      "num_processes": flags.DEFINE_integer("num_processes", 0, "processes in the job (0: "
                                            "auto-detect)", flag_values=flag_values),
      "process_id": flags.DEFINE_integer("process_id", -1, "this process's index (-1: auto-detect)",
                                         flag_values=flag_values),
      "dry_run": flags.DEFINE_bool("dry_run", False, "compile each training stage's step on abstract "
                                   "inputs and print its per-device memory and FLOP plan; trains "
                                   "nothing, writes nothing", flag_values=flag_values),
      "devices": flags.DEFINE_integer("devices", 0, "with --dry_run: plan for this many devices "
                                      "(fake CPU ones where no accelerator is present)",
                                      flag_values=flag_values),
      "device_memory_gb": flags.DEFINE_float("device_memory_gb", 0.0, "with --dry_run: check the "
                                             "plan against this memory per device (0: a table of "
                                             "H100, H200, A100, TPU v5e/v5p/v6e)",
                                             flag_values=flag_values),
  }


class _QuietLibraries(logging.Filter):
  """INFO lines of our own code pass; the libraries' (orbax logs every save) only from WARNING."""

  _PATHS = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "grain", "jax", "etils"))

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(p in record.pathname for p in self._PATHS)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  if _FLAGS["dry_run"].value:
    _dry_run(_FLAGS["config"].value, _FLAGS["devices"].value, _FLAGS["device_memory_gb"].value)
    return
  if not _FLAGS["workdir"].value:
    raise app.UsageError("--workdir is required (except with --dry_run)")
  from phi4_jax import distributed  # imports jax: after the hugepages re-exec
  distributed.initialize(_FLAGS["coordinator_address"].value, _FLAGS["num_processes"].value,
                         _FLAGS["process_id"].value)
  from phi4_jax.recipe import runner as recipe  # (these after jax.distributed.initialize)
  from phi4_jax.store import workdir
  from phi4_jax.train import recovery
  try:
    path = workdir.resolve(_FLAGS["workdir"].value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  config = _FLAGS["config"].value
  try:
    recipe.check(config, path)  # (nothing is written before every stage's config passed)
  except (ValueError, FileNotFoundError) as e:  # what the checks raise, each naming its field
    sys.exit(f"error: {e}")
  from phi4_jax.data import SourceError
  from phi4_jax.data.formats import CacheError
  try:
    recipe.run(config, path, checked=True)
  except (SourceError, CacheError, workdir.WorkdirError) as e:  # a bad data file, cache or workdir
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
      raise app.UsageError(f"--devices={devices}: this machine has {jax.device_count()} "
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


def run() -> None:
  hugepages.reexec_with_hugepages()
  _FLAGS.update(config=configs.define_flag(), **define_run_flags())
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run()

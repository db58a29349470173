"""`python -m phi4_jax.main --config=experiments/<stage>.py:<preset> --workdir=W` (or `phi4-jax`)."""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from phi4_jax import hugepages

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<stage>.py:<preset>",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, TensorBoard")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "processes in the job (0: auto-detect)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's index (-1: auto-detect)")
flags.mark_flags_as_required(["config", "workdir"])


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
  from phi4_jax import distributed  # imports jax: after the hugepages re-exec
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from phi4_jax.train import recipe  # after jax.distributed.initialize
  recipe.run(_CONFIG.value, os.path.expanduser(_WORKDIR.value))


def run() -> None:
  hugepages.reexec_with_hugepages()
  app.run(main)


if __name__ == "__main__":
  run()

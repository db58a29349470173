"""Joining a multi-process JAX job (jax.distributed) when launched as one."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

import jax


def should_initialize(coordinator_address: str, num_processes: int) -> bool:
  """Explicit flags, or a cluster environment that runs more than one process."""
  if coordinator_address or num_processes > 1:
    return True
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
    return True
  return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def barrier(name: str) -> None:
  """Waits for every process of a multi-process job at `name` (nothing in a one-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               cpu_collectives: str = "gloo") -> None:
  """jax.distributed.initialize with explicit values, or JAX's own cluster auto-detection."""
  if not should_initialize(coordinator_address, num_processes):
    return
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  kwargs = {}
  if coordinator_address:
    kwargs["coordinator_address"] = coordinator_address
  if num_processes > 0:
    kwargs["num_processes"] = num_processes
  if process_id >= 0:
    kwargs["process_id"] = process_id
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


@contextlib.contextmanager
def failing_fast():
  """In a multi-process job, a process that fails exits at once with its status. Left to Python,
  its exit runs jax.distributed's shutdown barrier, which waits (shutdown_timeout_seconds, 300 s)
  for the other processes while they wait in a collective for it: the launcher (launch/local.py,
  srun, a JobSet) would learn of the failure, and stop the job, minutes late."""
  try:
    yield
  except BaseException as e:  # (SystemExit and KeyboardInterrupt too: they exit as well)
    code = e.code if isinstance(e, SystemExit) else 130 if isinstance(e, KeyboardInterrupt) else 1
    if jax.process_count() <= 1 or code in (0, None):
      raise
    if isinstance(e, SystemExit):
      if not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    else:
      traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

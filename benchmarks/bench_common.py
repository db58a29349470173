"""What every benchmark script prints about itself: progress on stderr, the load, the CPU."""

import contextlib
import os
import platform
import sys
import tempfile


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def loadavg():
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


@contextlib.contextmanager
def prepared_run(config):
  """(run, state, compiled step, first placed batch) of train/loop.py for `config`, in a temporary
  workdir; the run is closed on exit."""
  from phi4_jax.train import loop
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.prepare(config, workdir)
    try:
      state = loop.build_or_restore_state(run)
      yield run, state, loop.compile_step(run), loop.batch_placer(run)(next(run.data_iter))
    finally:
      loop._close(run, raising=False)

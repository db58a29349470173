"""What every benchmark script prints about itself: progress on stderr, the load, the CPU."""

import os
import platform
import sys


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

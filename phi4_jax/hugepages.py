"""Transparent huge pages for large host allocations (Linux with glibc >= 2.35).

glibc serves every allocation above 32 MiB with a fresh mmap and returns it on free, so the
multi-hundred-MiB temporaries of a CPU train step (logits chunks, gradients, optimizer updates)
are faulted in 4 KiB at a time on every step. The tunable `glibc.malloc.hugetlb=1` makes malloc
ask for 2 MiB pages on those mappings (on kernels whose THP mode is `madvise`; with `always` it is
already so): a fresh buffer is then faulted in 2 MiB at a time (tests/test_hugepages.py counts
the faults; benchmarks/README.md has the train step's figures).

glibc reads tunables only when a process starts, so `reexec_with_hugepages` runs the current
command again, once, with the tunable added to GLIBC_TUNABLES. Setting `glibc.malloc.hugetlb`
yourself (e.g. `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`) opts out.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"


def wanted(environ: dict | None = None) -> bool:
  """True on Linux + glibc when GLIBC_TUNABLES does not already say anything about hugetlb."""
  environ = os.environ if environ is None else environ
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return False
  return TUNABLE not in environ.get("GLIBC_TUNABLES", "")


def reexec_with_hugepages() -> None:
  """Replaces this process with the same command plus glibc.malloc.hugetlb=1 (no-op if not wanted).

  Call it first thing in a command-line entry point, before threads or files are opened.
  """
  if not wanted():
    return
  tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t]
  env = dict(os.environ, GLIBC_TUNABLES=":".join([*tunables, f"{TUNABLE}=1"]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

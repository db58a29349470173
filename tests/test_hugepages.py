"""The huge-page re-exec: keeps the user's tunables, respects an opt-out, and cuts page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest

from phi4_jax import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC_LINUX = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Re-execs itself, then reports its tunables and the page faults of touching a fresh 256 MiB buffer.
_PROBE = """
import json, os, resource, sys
sys.path.insert(0, {root!r})
from phi4_jax import hugepages
hugepages.reexec_with_hugepages()
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buf = libc.malloc(256 * 2**20)  # through glibc's malloc, as XLA's and torch's buffers are
ctypes.memset(buf, 1, 256 * 2**20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"tunables": os.environ.get("GLIBC_TUNABLES"), "faults": faults}}))
"""


def _probe(tunables):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  out = subprocess.run([sys.executable, "-c", _PROBE.format(root=ROOT)], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def _thp_mode():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return f.read().split("[")[1].split("]")[0]
  except (OSError, IndexError):
    return None


def test_wanted_unless_the_user_already_set_hugetlb():
  assert hugepages.wanted({}) is GLIBC_LINUX
  assert hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) is GLIBC_LINUX
  assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc tunables exist only on Linux with glibc")
def test_reexec_appends_the_tunable_and_keeps_the_users():
  assert _probe(None)["tunables"] == "glibc.malloc.hugetlb=1"
  kept = _probe("glibc.malloc.trim_threshold=123456")["tunables"]
  assert kept == "glibc.malloc.trim_threshold=123456:glibc.malloc.hugetlb=1"
  assert _probe("glibc.malloc.hugetlb=0")["tunables"] == "glibc.malloc.hugetlb=0"  # opted out


@pytest.mark.skipif(not GLIBC_LINUX or _thp_mode() != "madvise",
                    reason="the tunable changes page faults only where THP is in madvise mode")
def test_huge_pages_cut_the_page_faults_of_a_large_buffer():
  small_pages = _probe("glibc.malloc.hugetlb=0")["faults"]
  huge_pages = _probe(None)["faults"]
  assert small_pages >= 60_000  # 256 MiB in 4 KiB pages is 65,536 faults
  assert huge_pages * 10 < small_pages, (huge_pages, small_pages)

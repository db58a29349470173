"""`run_python`: a model-written program run in a sandboxed subprocess, never in-process.

The program gets its own empty /tmp (a size-limited tmpfs, also its /var/tmp and /dev/shm), a clean
environment, no network and no Unix socket, its own /proc, a read-only view of everything else,
limits on wall-clock and CPU time, address space, processes and file size, and, when we are root
(as on CI), a fresh unprivileged uid so that the limits and the file system's permissions hold. On
timeout its process group and every process of its uid are killed: nothing is left behind; if this
process is killed, its runner and the program die with it, and the next run_python sweeps the
directories it left. A program passes only if its code ran to the end without an exception: the
harness in sandbox_child.py reports that with a one-time token, so exiting 0 early (sys.exit,
os._exit, an atexit handler, an exception hook) fails. sandbox_child.py does the confining; this
side supervises.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from phi4_jax.posttrain import sandbox_child
from phi4_jax.store import atomic

CHILD = os.path.abspath(sandbox_child.__file__)
OUTPUT_TAIL = 4000  # characters of stdout and stderr kept in a Result
_uids = random.SystemRandom()


class SandboxUnavailable(RuntimeError):
  """No file-system confinement is possible on this machine, so nothing was run."""


@dataclasses.dataclass(frozen=True)
class Result:
  passed: bool  # its code ran to the end, without an exception, within its limits
  reason: str  # ok | timeout | memory | killed | error: <the error's last line> | exited early: ...
  stdout: str
  stderr: str
  seconds: float


def _reason(returncode: int, timed_out: bool, stderr: str, finished: bool) -> str:
  if timed_out or returncode == -signal.SIGXCPU:
    return "timeout"
  if returncode == 0 and finished:
    return "ok"
  if returncode == 0:
    return "exited early: status 0 before its code ran to the end (sys.exit, os._exit, atexit?)"
  if "MemoryError" in stderr:
    return "memory"
  if returncode < 0:
    return "killed"
  lines = [line for line in stderr.splitlines() if line.strip()]
  return "error: " + (lines[-1].strip() if lines else f"exit status {returncode}")


def _kill_everything(proc: subprocess.Popen, uid: int | None) -> None:
  # Every process of the uid first (those that left the group included): the program's own
  # runner then reaps it; the group kill is the backstop without a uid.
  if uid is not None:
    subprocess.run([sys.executable, "-I", "-S", CHILD, "kill", str(uid)], check=False)
  try:
    proc.wait(timeout=5)
  except subprocess.TimeoutExpired:
    pass
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass


def _tail(path: str) -> str:
  with open(path, "rb") as f:
    f.seek(max(0, os.path.getsize(path) - OUTPUT_TAIL))
    return f.read().decode("utf-8", "replace")


PREFIX = "phi4_sandbox_"  # + <supervisor pid>_: the work and log directories of one run


def sweep_stale(tmp: str | None = None) -> list[str]:
  """Removes the sandbox directories of supervisors that no longer run (killed mid-run); returns
  them."""
  swept = []
  for path in glob.glob(os.path.join(tmp or tempfile.gettempdir(), PREFIX + "*")):
    pid = os.path.basename(path)[len(PREFIX):].split("_")[0]
    if pid.isdigit() and not atomic.process_alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)
      swept.append(path)
  return swept


def run_python(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> Result:
  """Run `program` (Python source) in a sandbox; passed = its code ran to the end without an
  exception within `timeout_s` seconds of wall-clock time and `memory_mb` of address space."""
  if not timeout_s > 0 or memory_mb < 64:
    raise ValueError(f"run_python: timeout_s must be > 0 and memory_mb >= 64, got {timeout_s}, {memory_mb}")
  sweep_stale()
  root = os.getuid() == 0
  uid = _uids.randrange(1_000_000, 2_000_000_000) if root else None
  run = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}_")
  work, logs = os.path.join(run, "work"), os.path.join(run, "logs")
  os.mkdir(work)
  os.mkdir(logs, 0o700)
  token = uuid.uuid4().hex
  try:
    with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
      f.write(program)
    if root:
      for path in (work, os.path.join(work, "program.py")):
        os.chown(path, uid, uid)
    os.chmod(run, 0o755)
    os.chmod(work, 0o700)
    out_path, err_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
    cmd = [sys.executable, "-I", "-S", CHILD, "run", work, str(uid or 0), str(math.ceil(timeout_s) + 1),
           str(int(memory_mb)), str(os.getpid())]
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
      proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err,
                              start_new_session=True, close_fds=True)
      try:
        proc.stdin.write(f"{token}\n".encode())
        proc.stdin.close()
      except BrokenPipeError:  # (the runner failed to start: its status and stderr say why)
        pass
      try:
        proc.wait(timeout=timeout_s)
        timed_out = False
      except subprocess.TimeoutExpired:
        timed_out = True
      _kill_everything(proc, uid)  # also after a normal exit: children it left running
      proc.wait()
    seconds = time.monotonic() - start
    stdout, stderr = _tail(out_path), _tail(err_path)
    if proc.returncode == sandbox_child.UNAVAILABLE and "sandbox unavailable" in stderr:
      raise SandboxUnavailable(stderr.strip())
    seal = f"\n{sandbox_child.PASSED} {token}\n"
    reason = _reason(proc.returncode, timed_out, stderr, seal in stdout)
    return Result(reason == "ok", reason, stdout.replace(seal, ""), stderr, seconds)
  finally:
    shutil.rmtree(run, ignore_errors=True)

"""N processes of one JAX program on this machine, joined by jax.distributed over loopback.

python -m launch.local --num_processes=2 --devices_per_process=2 -- \
    --config=experiments/pretrain.py:test --workdir=/tmp/run

Each process gets its own fake CPU devices and `--coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=i` after the program's arguments. Output is streamed with a `[i]`
prefix. When one process fails the others are stopped and the launcher exits with its code
(`--timeout_s` stops a job that runs too long, exit 124). Ctrl-C or SIGTERM is forwarded as
SIGTERM (the training loop then checkpoints and exits); the processes die with the launcher.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, TextIO

DEFAULT_MODULE = "phi4_jax.main"


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def host_device_count(xla_flags: str) -> int:
  """CPU devices per process under these XLA_FLAGS: the last
  --xla_force_host_platform_device_count, else 1."""
  counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
  return int(counts[-1]) if counts else 1


def process_env(devices_per_process: int, base: dict[str, str] | None = None) -> dict[str, str]:
  """`base` (default os.environ) on the CPU platform with `devices_per_process` fake devices."""
  env = dict(os.environ if base is None else base)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count={devices_per_process}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def process_commands(args: list[str], num_processes: int, port: int,
                     module: str = DEFAULT_MODULE) -> list[list[str]]:
  """One `python -m module ARGS --coordinator_address ... --process_id=i` per process."""
  return [[sys.executable, "-m", module, *args, f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={num_processes}", f"--process_id={i}"] for i in range(num_processes)]


def exit_code(returncode: int) -> int:
  """A shell-style exit status: negative (killed by signal s) becomes 128 + s."""
  return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
  if returncode < 0:
    return f"was killed by {signal.Signals(-returncode).name}"
  return f"exited with status {returncode}"


def _die_with_launcher() -> None:
  """In the child before exec (Linux): SIGKILL it when the launcher dies, even by SIGKILL."""
  if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class _Group:
  """Running child processes (each in its own session) and the threads that copy their output."""

  def __init__(self, commands: list[list[str]], env: dict[str, str], out: TextIO):
    self._lock = threading.Lock()
    self._out = out
    # stdout and stderr in separate pipes: merged, a native library's stderr line can land
    # between a Python print's text and its newline (two writes when unbuffered).
    self.procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, errors="replace", start_new_session=True,
                                   preexec_fn=_die_with_launcher)
                  for cmd in commands]
    self._threads = [threading.Thread(target=self._pump, args=(i, stream), daemon=True)
                     for i, p in enumerate(self.procs) for stream in (p.stdout, p.stderr)]
    for t in self._threads:
      t.start()

  def print(self, line: str) -> None:
    with self._lock:
      self._out.write(line if line.endswith("\n") else line + "\n")
      self._out.flush()

  def _pump(self, index: int, stream: TextIO) -> None:
    for line in stream:  # universal newlines: progress-bar "\r" updates arrive as lines
      if line.strip():
        self.print(f"[{index}] {line}")

  def signal(self, sig: int) -> None:
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, sig)
        except ProcessLookupError:
          pass

  def stop(self, grace_s: float) -> None:
    """SIGTERM, then SIGKILL whatever still runs after grace_s seconds."""
    self.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and [p.poll() for p in self.procs].count(None):
      time.sleep(0.05)
    self.signal(signal.SIGKILL)
    for p in self.procs:
      p.wait()

  def join_output(self) -> None:
    for t in self._threads:
      t.join(timeout=5)


def launch(args: list[str], num_processes: int = 2, devices_per_process: int = 1,
           module: str = DEFAULT_MODULE, port: int = 0, grace_s: float = 5.0,
           timeout_s: float = 0.0, out: TextIO | None = None) -> int:
  """Runs the processes to completion; returns 0, or the exit status of the first one that failed
  (124 when timeout_s > 0 passed first)."""
  if num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
  if devices_per_process < 1:
    raise ValueError(f"--devices_per_process must be >= 1, got {devices_per_process}")
  out = sys.stdout if out is None else out
  port = port or free_port()
  group = _Group(process_commands(args, num_processes, port, module), process_env(devices_per_process),
                 out)
  for i, p in enumerate(group.procs):
    group.print(f"[launch] process {i} pid {p.pid}")
  interrupts = []
  restore = _forward_signals(lambda sig, _: interrupts.append(sig))
  try:
    status = _supervise(group, interrupts, grace_s, timeout_s)
    group.join_output()
    return status or _final_status(group)
  finally:
    restore()
    group.stop(0.0)


def _supervise(group: _Group, interrupts: list[int], grace_s: float, timeout_s: float) -> int:
  """Polls until every process has exited. The first failure, or the timeout, stops the others
  and sets the status; interrupts are forwarded (the second one kills)."""
  deadline = time.monotonic() + timeout_s if timeout_s > 0 else float("inf")
  status, forwarded = 0, 0
  while [p.poll() for p in group.procs].count(None):  # polls every process (any() would stop early)
    if not status:
      status = _stop_on_failure(group, grace_s) or _stop_on_timeout(group, deadline, timeout_s,
                                                                     grace_s)
    if len(interrupts) > forwarded:
      forwarded = len(interrupts)
      _forward_interrupt(group, forwarded)
    time.sleep(0.05)
  return status


def _stop_on_failure(group: _Group, grace_s: float) -> int:
  """If a process failed: stops the others and returns its exit status (else 0)."""
  failed = _first_failure(group.procs)
  if not failed:
    return 0
  group.print(f"[launch] process {failed[0]} {_describe(failed[1])}; stopping the others")
  group.stop(grace_s)
  return exit_code(failed[1])


def _stop_on_timeout(group: _Group, deadline: float, timeout_s: float, grace_s: float) -> int:
  """Past the deadline: stops every process and returns 124 (else 0)."""
  if time.monotonic() <= deadline:
    return 0
  group.print(f"[launch] still running after {timeout_s:g}s; stopping the processes")
  group.stop(grace_s)
  return 124


def _forward_interrupt(group: _Group, count: int) -> None:
  """The first interrupt is passed on as SIGTERM (the loop checkpoints and exits); later ones kill."""
  if count == 1:
    group.print("[launch] forwarding SIGTERM (interrupt again to kill)")
    group.signal(signal.SIGTERM)
  else:
    group.stop(0.0)


def _final_status(group: _Group) -> int:
  """After every process exited on its own: the first failure's exit status, or 0."""
  failed = _first_failure(group.procs)
  if not failed:
    return 0
  group.print(f"[launch] process {failed[0]} {_describe(failed[1])}")
  return exit_code(failed[1])


def _first_failure(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
  """(index, returncode) of the first process that exited non-zero, if any."""
  return next(((i, p.returncode) for i, p in enumerate(procs) if p.returncode), None)


def _forward_signals(handler) -> Callable[[], None]:
  """Installs handler for SIGINT/SIGTERM (main thread only); returns a function that restores."""
  if threading.current_thread() is not threading.main_thread():
    return lambda: None
  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

  def restore() -> None:
    for s, h in previous.items():
      signal.signal(s, h)
  return restore


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """(launcher flags, program arguments) around the first `--`."""
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def main(argv: list[str] | None = None) -> int:
  own, program = split_argv(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start")
  parser.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices each")
  parser.add_argument("--module", default=DEFAULT_MODULE, help="python -m MODULE for every process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: pick a free one)")
  parser.add_argument("--grace_s", type=float, default=5.0,
                      help="seconds between SIGTERM and SIGKILL when stopping processes")
  parser.add_argument("--timeout_s", type=float, default=0.0,
                      help="stop every process and exit 124 after this many seconds (0: no limit)")
  flags = parser.parse_args(own)
  try:
    return launch(program, flags.num_processes, flags.devices_per_process, flags.module, flags.port,
                  flags.grace_s, flags.timeout_s)
  except ValueError as e:
    parser.error(str(e))


if __name__ == "__main__":
  sys.exit(main())

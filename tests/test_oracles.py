"""Oracles (final answer, multiple choice, Python tests) and the sandbox that runs model code."""

import os
import socket
import subprocess
import textwrap
import uuid

import pytest

from phi4_jax.data import synthetic
from phi4_jax.posttrain import oracles


@pytest.mark.parametrize("completion, ok", [
    ("... so x = 7.\n\nFinal answer: x = 7", True),
    ("Final answer: x = 7.0", True),  # by value
    ("The answer is \\boxed{7}. Answer: 8", True),  # a boxed answer wins
    ("\\boxed{\\frac{14}{2}}", True),
    ("Answer: 8", False),
    ("3 + 4 = 7, so Final answer: 8", False),  # only the final answer counts
    ("", False),
    ("Answer: 1/0", False),
    ("Final answer: 7 answer: 8", False),  # the last `Answer:` on a line counts, not the first
    ("Final answer: 8 answer: 7", True),
    ("Final answer:\n\n7", True),
])
def test_final_answer_by_value_and_only_the_final_statement(completion, ok):
  assert oracles.check({"question": "Solve 2x = 14.", "answer": "x = 7"}, completion) is ok


def test_final_answer_of_every_embedded_exercise_topic_and_its_wrong_answer():
  for i in range(60):
    ex = synthetic.exercise(i, seed=5)
    record = {"question": ex["question"], "answer": ex["answer"]}
    assert oracles.check(record, synthetic.worked_solution(ex)), ex
    wrong = f"{ex['solution']}\n\nFinal answer: {synthetic.wrong_final_answer(ex['answer'], __import__('random').Random(i))}"
    assert not oracles.check(record, wrong), ex
    # the question's own numbers never make a success
    assert not oracles.check(record, ex["question"])


def test_fractions_decimals_and_words():
  assert oracles.check_final_answer("1/2", "Answer: 0.5")
  assert oracles.check_final_answer("x = 3 or x = -4", "Final answer: x = 3 or x = -4")
  assert not oracles.check_final_answer("x = 3 or x = -4", "Final answer: x = -4 or x = 3")
  assert oracles.check_final_answer("Paris", "Answer:  paris.")
  assert not oracles.check_final_answer("Paris", "Answer: Lyon")


@pytest.mark.parametrize("completion, ok", [
    ("Answer: B", True), ("answer: (b)", True), ("Answer: $B$", True),
    ("Answer: A\nOn reflection, Answer: B", True), ("Answer: C", False), ("B", False),
    ("Answer: Because", False),
])
def test_multiple_choice_letter_after_answer(completion, ok):
  assert oracles.check({"kind": "multiple_choice", "answer": "B"}, completion) is ok


def test_python_tests_pass_and_fail_on_the_completion_code():
  record = {"kind": "python", "tests": "assert add(2, 3) == 5"}
  assert oracles.check(record, "Here:\n```python\ndef add(a, b):\n  return a + b\n```")
  assert not oracles.check(record, "```python\ndef add(a, b):\n  return a - b\n```")
  result = oracles.check_python(record["tests"], "def add(a, b): return a - b")
  assert result.reason == "error: AssertionError" and not result.passed


def test_unknown_kind_names_the_question():
  with pytest.raises(ValueError, match="question q7: kind must be one of"):
    oracles.check({"id": "q7", "kind": "essay", "answer": "x"}, "x")


def _processes_naming(marker: str) -> list[str]:
  out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout.splitlines()
  return [line for line in out if marker in line]


def test_sandbox_contains_a_loop_a_fork_bomb_memory_network_and_writes(tmp_path):
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  server.settimeout(0.05)
  port = server.getsockname()[1]
  marker = f"phi4_sandbox_probe_{uuid.uuid4().hex}"
  cases = {
      "loop": ("while True:\n  pass", "timeout"),
      "fork bomb": ("import os\nwhile True:\n  os.fork()", "error: BlockingIOError"),
      "10 GB": ("x = bytearray(10 * 2**30)", "memory"),
      "socket": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)",
                 "error: OSError"),
      "write /etc": (f"open('/etc/{marker}', 'w').write('x')", "error: OSError"),
      "write here": (f"open({str(tmp_path / marker)!r}, 'w').write('x')", "error:"),
      "escape by setsid": ("import os, sys\nif os.fork() == 0:\n  os.setsid()\n  os.execv(sys.executable, "
                           f"[sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])", "ok"),
      "shared memory": (f"open('/dev/shm/{marker}', 'w').write('x')", "ok"),  # its own, not the host's
      "fill the scratch": ("for i in range(8):\n  open(f'/tmp/f{i}', 'wb').write(bytes(60 * 2**20))",
                           "error: OSError"),  # 256 MB of tmpfs, then no space
  }
  for name, (program, reason) in cases.items():
    # 2 s for the loop; the others stop on their own, so a loaded machine gets 20 s for them
    result = oracles.run_python(program, timeout_s=2.0 if name == "loop" else 20.0, memory_mb=512)
    assert result.reason.startswith(reason), (name, result)
    assert result.passed is (reason == "ok"), name
    assert result.seconds < 60, name  # a hang bound, not a timing target
  with pytest.raises(socket.timeout):
    server.accept()  # nothing connected
  assert not os.path.exists(f"/etc/{marker}") and not (tmp_path / marker).exists()
  assert not os.path.exists(f"/dev/shm/{marker}")
  assert not _processes_naming(marker)  # nothing left behind (the setsid sleeper included)


def test_sandbox_scratch_is_private_and_environment_clean():
  program = textwrap.dedent("""
      import os, sys
      open('/tmp/scratch', 'w').write('x')
      print(sorted(os.environ), os.getcwd(), os.getuid() != 0, sorted(os.listdir('/tmp')))
  """)
  result = oracles.run_python(program)
  assert result.passed, result
  assert "['HOME', 'LANG', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'TMPDIR']" in result.stdout
  # as root (CI) the program runs under a fresh uid; otherwise as root of a user namespace
  assert f"/tmp {os.getuid() == 0} ['program.py', 'scratch']" in result.stdout
  assert not os.path.exists("/tmp/scratch")

"""The synth engine under jax.distributed: two processes (launch/local.py on loopback) against one
loopback endpoint write exactly what one process writes, and each process made its own share."""

import io
import json
import os

from launch import local
from phi4_jax.synth import __main__ as synth_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reply(body):
  """A deterministic teacher: a rewrite that names the passage's first words."""
  prompt = body["messages"][-1]["content"]
  passage = prompt.split("Passage:\n", 1)[-1]
  return "A textbook section: " + " ".join(passage.split()[:12]) + " and what it means, explained step by step."


def test_two_processes_write_what_one_process_writes(tmp_path, openai_server, monkeypatch):
  openai_server.reply = _reply
  seeds = tmp_path / "seeds.jsonl"
  with open(seeds, "w") as f:
    for k in range(10):
      f.write(json.dumps({"id": f"doc{k}", "text": f"Document {k} says that {k} plus {k} makes {2 * k}, "
                          f"which is even, and that {k} squared is {k * k}."}) + "\n")
  port = openai_server.server_address[1]
  args = ["--type=web_rewrite", f"--seeds={seeds}", f"--generator=http://127.0.0.1:{port}/v1,model=teacher",
          "--config.min_tokens=4", "--config.items_per_round=4"]
  synth_main.main(args + [f"--out={tmp_path / 'one'}"])
  monkeypatch.setenv("PYTHONPATH", REPO)
  out = io.StringIO()
  status = local.launch(args + [f"--out={tmp_path / 'two'}"], num_processes=2, devices_per_process=1,
                        module="phi4_jax.synth", timeout_s=240, out=out)
  assert status == 0, out.getvalue()[-4000:]
  one = (tmp_path / "one" / "web_rewrite.jsonl").read_bytes()
  assert one == (tmp_path / "two" / "web_rewrite.jsonl").read_bytes()
  assert len(one.splitlines()) == 10
  parts = sorted(p.name for p in (tmp_path / "two" / "log").iterdir() if ".made.jsonl.part-" in p.name)
  assert parts == ["web_rewrite.made.jsonl.part-00000-of-00002", "web_rewrite.made.jsonl.part-00001-of-00002"]
  made = [[json.loads(line)["item_id"] for line in open(tmp_path / "two" / "log" / p)] for p in parts]
  assert made == [[f"doc{k}/p0" for k in (0, 2, 4, 6, 8)], [f"doc{k}/p0" for k in (1, 3, 5, 7, 9)]]
  summary = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert summary["types"]["web_rewrite"]["accepted"] == 10


def test_kill_9_mid_run_then_the_same_command_writes_what_an_uninterrupted_run_writes(tmp_path, openai_server):
  """The first run is killed (SIGKILL) while the endpoint holds one of the third round's requests:
  two rounds are logged, the third is not; the rerun makes only what is missing."""
  import signal
  import subprocess
  import sys
  import threading

  seen, arrived = [], threading.Event()

  def reply(body):
    seen.append(body)
    if len(seen) == 5 and not arrived.is_set():  # (rounds of 2 items: requests 1-4 are rounds 1 and 2)
      arrived.set()
      openai_server.release.wait()
    return _reply(body)

  openai_server.reply = reply
  seeds = tmp_path / "seeds.jsonl"
  with open(seeds, "w") as f:
    for k in range(8):
      f.write(json.dumps({"id": f"doc{k}", "text": f"Fact {k}: {k} times three is {3 * k}."}) + "\n")
  port = openai_server.server_address[1]
  args = ["--type=web_rewrite", f"--seeds={seeds}", f"--generator=http://127.0.0.1:{port}/v1,model=teacher",
          "--config.min_tokens=4", "--config.items_per_round=2", "--config.concurrency=1"]
  env = {**os.environ, "PYTHONPATH": REPO}
  killed = subprocess.Popen([sys.executable, "-m", "phi4_jax.synth", *args, f"--out={tmp_path / 'run'}"], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  assert arrived.wait(120), killed.stderr.read().decode()[-2000:] if killed.poll() is not None else "no request 5"
  killed.send_signal(signal.SIGKILL)
  killed.wait(60)
  logged = (tmp_path / "run" / "log" / "web_rewrite.log.jsonl").read_text().splitlines()
  assert len(logged) == 4  # rounds 1 and 2
  openai_server.release.set()
  before = len(seen)
  synth_main.main(args + [f"--out={tmp_path / 'run'}"])
  assert len(seen) - before == 4  # only rounds 3 and 4 were asked again
  synth_main.main(args + [f"--out={tmp_path / 'whole'}"])
  assert (tmp_path / "run" / "web_rewrite.jsonl").read_bytes() == (tmp_path / "whole" / "web_rewrite.jsonl").read_bytes()
  assert len((tmp_path / "whole" / "web_rewrite.jsonl").read_text().splitlines()) == 8

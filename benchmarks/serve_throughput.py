#!/usr/bin/env python
"""Serving throughput: `python -m phi4_jax.serve` against `transformers serve --continuous-batching`.

Both serve the same random weights (decode_throughput.py's model: vocab 100,352, d_model 512,
8 layers, fp32; --quick: 2 layers of 64) from the folder phi4_jax.hf.save writes, each as its own
process on this machine, one after the other. Closed-loop load: C clients (C = 1, 8, 32), each
sending --requests_per_client streaming /v1/completions back to back: a 128-token prompt (a text of
single-token words, different per request, no chat template), exactly 128 new tokens, greedy, no
stop. EOS is turned off on both sides: ours with `ignore_eos`, which transformers serve rejects
(422), so its requests carry `generation_config: {"eos_token_id": -1}` instead (continuous batching
then has no EOS). transformers serve gets the folder as its model (preloaded; requests name the
same path) and a free port; readiness is the server's "running at" line (ours on stdout, uvicorn's
on stderr: both are read, and passed on to stderr). Per C: generated tokens/s (completion tokens /
wall time of the level), time to first token (request sent -> first streamed text) p50 and p99,
after two untimed rounds of C requests. Outputs at temperature 0 are compared request by request
between the two servers: `outputs_identical` counts the requests whose texts match. Ratios are
ours / transformers', per C: tokens/s and TTFT p50 and p99.

Nothing waits without a limit: a server gets --startup_s to come up and each request
--request_timeout_s; a side that fails (start-up, HTTP error, timeout) reports its error in the
JSON ("error") and its ratios are null.

transformers serve needs FastAPI and Uvicorn (`pip install transformers[serving]`); when they, or
its `serve` command, are missing, its side reports why and its ratios are null.

  python benchmarks/serve_throughput.py            # the full benchmark
  python benchmarks/serve_throughput.py --quick    # tiny model, few tokens: a smoke check

Prints ONE JSON object to stdout; progress (and the servers' logs) go to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench_common import cpu_model, loadavg, log  # (benchmarks/bench_common.py)
from decode_throughput import FULL_SHAPE, QUICK_SHAPE, ROPE_THETA  # (benchmarks/decode_throughput.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

WORDS = [" the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " with", " on", " by",
         " this", " from", " at", " or", " be", " are", " an", " not", " which", " have", " one"]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny model, short prompts: a smoke check")
  p.add_argument("--concurrency", default=None, help="comma-separated client counts (1,8,32; quick 1,4)")
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens (128; quick 16)")
  p.add_argument("--new_tokens", type=int, default=None, help="new tokens per request (128; quick 8)")
  p.add_argument("--requests_per_client", type=int, default=None,
                 help="timed requests per client (2; quick 1)")
  p.add_argument("--max_batch", type=int, default=32, help="our decode slots")
  p.add_argument("--skip_hf", action="store_true", help="no transformers side")
  p.add_argument("--startup_s", type=float, default=600.0, help="how long a server may take to start")
  p.add_argument("--request_timeout_s", type=float, default=None,
                 help="how long one request may take, start to end (600; quick 120)")
  args = p.parse_args(argv)
  quick = args.quick
  args.concurrency = [int(c) for c in (args.concurrency or ("1,4" if quick else "1,8,32")).split(",")]
  args.prompt_len = args.prompt_len or (16 if quick else 128)
  args.new_tokens = args.new_tokens or (8 if quick else 128)
  args.requests_per_client = args.requests_per_client or (1 if quick else 2)
  args.request_timeout_s = args.request_timeout_s or (120.0 if quick else 600.0)
  return args


def save_model(args, folder: str) -> dict:
  """Random weights of the benchmark's shape in `folder` (an HF folder with our tokenizer)."""
  import jax

  from phi4_jax import hf
  from phi4_jax import model as model_lib
  shape = {**(QUICK_SHAPE if args.quick else FULL_SHAPE), "vocab_size": 100_352}  # (text prompts: full vocab)
  cfg = model_lib.ModelConfig(**shape, rope_theta=ROPE_THETA, param_dtype="float32", dtype="float32",
                              max_seq_len=max(512, 2 * (args.prompt_len + args.new_tokens)))
  hf.save(cfg, jax.jit(model_lib.init, static_argnums=0)(cfg, jax.random.key(0)), folder)
  return {**shape, "params": model_lib.param_count(cfg), "dtype": "float32"}


def prompt_text(i: int, n: int) -> str:
  return "".join(WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(n))


def one_request(host: str, port: int, body: dict, timeout_s: float) -> tuple[float | None, str, int]:
  """(seconds to the first streamed text, the text, completion tokens) of one streaming completion;
  raises on an HTTP error, an error event, or past `timeout_s` (also the socket's limit per read)."""
  start = time.monotonic()
  conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
  try:
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
      raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first, text, tokens = None, [], 0
    for line in response:
      if time.monotonic() - start > timeout_s:
        raise TimeoutError(f"request still streaming after {timeout_s:g} s")
      line = line.decode().strip()
      if not line.startswith("data: ") or line == "data: [DONE]":
        continue
      event = json.loads(line[6:])
      if "error" in event:
        raise RuntimeError(f"error event: {str(event['error'])[:300]}")
      for choice in event.get("choices") or []:
        if choice.get("text") and first is None:
          first = time.monotonic() - start
        text.append(choice.get("text") or "")
      tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
    return first, "".join(text), tokens
  finally:
    conn.close()


def load_level(host, port, model, no_eos: dict, clients: int, args, offset: int) -> dict:
  """Closed loop: `clients` threads, each sending requests_per_client requests in turn; raises
  (after every client stopped) when a request failed. `no_eos`: the side's fields that turn EOS off."""
  def client(c):
    out = []
    for r in range(args.requests_per_client):
      i = offset + c * args.requests_per_client + r
      body = {"model": model, "prompt": prompt_text(i, args.prompt_len), "max_tokens": args.new_tokens,
              "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **no_eos}
      try:
        out.append((i, *one_request(host, port, body, args.request_timeout_s)))
      except Exception as e:  # (this client stops; the others finish or time out)
        out.append((i, f"{type(e).__name__}: {e}"))
        break
    return out

  start = time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    results = [r for rs in pool.map(client, range(clients)) for r in rs]
  wall = time.monotonic() - start
  failed = [r for r in results if len(r) == 2]
  if failed:
    raise RuntimeError(f"{len(failed)} of {len(results)} requests at {clients} clients failed, "
                       f"request {failed[0][0]}: {failed[0][1]}")
  ttfts = sorted(r[1] for r in results if r[1] is not None)
  tokens = sum(r[3] or args.new_tokens for r in results)
  pct = lambda q: round(ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))], 4) if ttfts else None
  return {"requests": len(results), "wall_s": round(wall, 3), "generated_tokens": tokens,
          "tokens_per_s": round(tokens / wall, 2), "ttft_p50_s": pct(0.5), "ttft_p99_s": pct(0.99),
          "texts": {r[0]: r[2] for r in results}}


def run_side(name: str, command: list[str], url_pattern: str, model: str, no_eos: dict, args) -> dict:
  """Starts a server process (a session of its own), waits for its URL line on stdout or stderr
  (a thread passes both on to ours), loads it at every concurrency, stops it (SIGTERM, then SIGKILL to
  its group). Its levels, or {"error": why} when it failed."""
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  url, exited = [], threading.Event()

  def pump():  # (always drained: a full pipe would block the server)
    for line in proc.stdout:
      sys.stderr.write(line)
      if not url:
        found = re.search(url_pattern, line)
        if found:
          url.append((found.group(1), int(found.group(2))))
    exited.set()

  threading.Thread(target=pump, daemon=True).start()
  levels = {}
  try:
    deadline = time.monotonic() + args.startup_s
    while not url and not exited.is_set() and time.monotonic() < deadline:
      time.sleep(0.2)
    if not url:
      if exited.is_set():
        raise RuntimeError(f"{os.path.basename(command[0])} exited ({proc.wait()}) before serving")
      raise TimeoutError(f"no URL line within --startup_s={args.startup_s:g} s")
    host, port = url[0]
    offset = 0
    for clients in args.concurrency:
      for warm in range(2):  # (untimed: compiles, caches)
        load_level(host, port, model, no_eos, clients, args, offset=10_000 * (warm + 1) + offset)
      levels[str(clients)] = load_level(host, port, model, no_eos, clients, args, offset)
      offset += clients * args.requests_per_client
      log(f"{name} x{clients}: { {k: v for k, v in levels[str(clients)].items() if k != 'texts'} }")
    return levels
  except Exception as e:
    log(f"{name}: failed: {type(e).__name__}: {e}")
    return {"error": f"{type(e).__name__}: {e}", **({"levels_done": levels} if levels else {})}
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      pass
    try:  # (whatever it started and left behind, e.g. transformers serve's model process)
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def transformers_command() -> str | None:
  """transformers' command line: beside this Python (a venv not on PATH), else on PATH."""
  beside = os.path.join(os.path.dirname(sys.executable), "transformers")
  return beside if os.path.exists(beside) else shutil.which("transformers")


def hf_available() -> str | None:
  """Why `transformers serve` cannot run here, or None."""
  if transformers_command() is None:
    return "no `transformers` command in this environment"
  missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
  if missing:
    return f"transformers serve needs {', '.join(missing)} (pip install 'transformers[serving]')"
  return None


def main(argv=None):
  args = parse_args(argv)
  import transformers
  result = {"benchmark": "serve_throughput",
            "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else argv)),
            "load": {"prompt_tokens": args.prompt_len, "new_tokens": args.new_tokens, "greedy": True,
                     "concurrency": args.concurrency, "requests_per_client": args.requests_per_client,
                     "loop": "closed: each client sends its next request when the last one ends; two untimed "
                             "rounds per level first"},
            "cpu": cpu_model(), "load_average_start": loadavg(),
            "transformers_version": transformers.__version__}
  with tempfile.TemporaryDirectory() as folder:
    result["model"] = save_model(args, folder)
    ours = [sys.executable, "-m", "phi4_jax.serve", f"--hf_dir={folder}", "--port=0", "--model_name=bench",
            f"--max_batch={args.max_batch}", f"--max_seq_len={2 * (args.prompt_len + args.new_tokens)}"]
    sides = {"ours": run_side("ours", ours, r"at http://([\d.]+):(\d+)/v1", "bench", {"ignore_eos": True},
                              args)}
    why = "skipped (--skip_hf)" if args.skip_hf else hf_available()
    if why is None:
      # (the folder as the model: preloaded, and the name requests must give; uvicorn logs "Uvicorn running
      # on http://localhost:PORT" on stderr; --device auto: as ours, whatever accelerator there is)
      hf = [transformers_command(), "serve", folder, "--continuous-batching", "--host", "127.0.0.1",
            "--port", str(free_port()), "--max-model-len", str(2 * (args.prompt_len + args.new_tokens))]
      sides["hf"] = run_side("transformers serve", hf, r"Uvicorn running on http://([\w.]+):(\d+)", folder,
                             {"generation_config": json.dumps({"eos_token_id": -1})}, args)
    result["transformers_serve"] = {"available": why is None, **({"reason": why} if why else {})}
  for name, levels in sides.items():
    result[name] = levels if "error" in levels else {
        c: {k: v for k, v in level.items() if k != "texts"} for c, level in levels.items()}
  ok = lambda name: name in sides and "error" not in sides[name]
  metrics = ("tokens_per_s", "ttft_p50_s", "ttft_p99_s")
  for metric in metrics:
    result[f"ratio_{metric}_ours_over_hf"] = None
  result["outputs_identical"] = None
  if ok("ours") and ok("hf"):
    ours_, hf_ = sides["ours"], sides["hf"]
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None
    for metric in metrics:
      result[f"ratio_{metric}_ours_over_hf"] = {c: ratio(ours_[c][metric], hf_[c][metric]) for c in ours_}
    result["outputs_identical"] = {
        c: {"identical": sum(text == hf_[c]["texts"].get(i) for i, text in ours_[c]["texts"].items()),
            "requests": len(ours_[c]["texts"])} for c in ours_}
  result["load_average_end"] = loadavg()
  print(json.dumps(result))


if __name__ == "__main__":
  main()

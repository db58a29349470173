"""The server's counters, rendered in Prometheus' text format for GET /metrics, and the request log.

Counters: requests by endpoint and status, prompt and generated tokens, cancelled requests,
request latency and time to first token (sums and counts); gauges read from the engine when
rendered: waiting rows (queue depth), busy and total decode slots, decode steps run.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time

PREFIX = "phi4_serve"


class Metrics:
  def __init__(self, log_path: str | None = None):
    self.lock = threading.Lock()
    self.requests: collections.Counter = collections.Counter()  # (endpoint, status) -> count
    self.totals: collections.Counter = collections.Counter()
    self.log = open(log_path, "a", encoding="utf-8") if log_path else sys.stderr

  def record(self, entry: dict) -> None:
    """Counts one finished request and writes its log line (one JSON object)."""
    with self.lock:
      self.requests[(entry["endpoint"], entry["status"])] += 1
      self.totals["prompt_tokens"] += entry.get("prompt_tokens", 0)
      self.totals["generated_tokens"] += entry.get("completion_tokens", 0)
      self.totals["cancelled"] += entry.get("cancelled", False)
      self.totals["latency_sum"] += entry["latency_s"]
      self.totals["latency_count"] += 1
      if entry.get("ttft_s") is not None:
        self.totals["ttft_sum"] += entry["ttft_s"]
        self.totals["ttft_count"] += 1
      self.log.write(json.dumps({"time": round(time.time(), 3), **entry}) + "\n")
      self.log.flush()

  def render(self, engine) -> str:
    lines = []

    def metric(name, kind, help, samples):
      lines.extend([f"# HELP {PREFIX}_{name} {help}", f"# TYPE {PREFIX}_{name} {kind}"])
      lines.extend(f"{PREFIX}_{name}{labels} {value}" for labels, value in samples)

    with self.lock:
      requests = sorted(self.requests.items())
      t = dict(self.totals)
    metric("requests_total", "counter", "HTTP requests answered, by endpoint and status",
           [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in requests])
    metric("prompt_tokens_total", "counter", "prompt tokens of answered requests",
           [("", t.get("prompt_tokens", 0))])
    metric("generated_tokens_total", "counter", "tokens generated for answered requests",
           [("", t.get("generated_tokens", 0))])
    metric("requests_cancelled_total", "counter", "requests whose client went away before the end",
           [("", t.get("cancelled", 0))])
    metric("request_latency_seconds", "summary", "request latency",
           [("_sum", t.get("latency_sum", 0.0)), ("_count", t.get("latency_count", 0))])
    metric("time_to_first_token_seconds", "summary", "time from arrival to the first generated token",
           [("_sum", t.get("ttft_sum", 0.0)), ("_count", t.get("ttft_count", 0))])
    metric("queue_depth", "gauge", "rows waiting for a decode slot", [("", engine.queue_depth())])
    metric("slots_busy", "gauge", "decode slots holding a row", [("", engine.busy)])
    metric("slots_total", "gauge", "decode slots (--max_batch)", [("", engine.slots)])
    metric("decode_steps_total", "counter", "decode steps run (the slots up to the last busy one at once)",
           [("", engine.decode_steps)])
    metric("decoded_rows_total", "counter", "slot-steps computed by decode (busy or not): its work",
           [("", engine.decoded_rows)])
    return "\n".join(lines) + "\n"

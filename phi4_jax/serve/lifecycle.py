"""Starting a server on a model, and stopping it: drain in-flight requests within a bound, then close.

  server = start(params, cfg, model_name="phi4", port=0)    # serving on a thread; server.url
  drain(server, drain_s=30)                                 # 503 to new requests, wait, close

`run_until_signalled` is the command's main loop: SIGTERM (or SIGINT) starts the drain.
"""

from __future__ import annotations

import math
import signal
import sys
import threading

import jax

from phi4_jax import model as model_lib
from phi4_jax.model import ModelConfig
from phi4_jax.serve.engine import Engine
from phi4_jax.serve.http import Server
from phi4_jax.serve.metrics import Metrics


def mesh_of(shape) -> "jax.sharding.Mesh | None":
  """A (data, fsdp, tensor) mesh over this host's first devices (all of them with a -1); None for
  no shape. Serving is tensor parallel: the params and the cache's kv heads follow cfg's rules."""
  if not shape:
    return None
  devices = jax.local_devices()
  if -1 not in shape:
    devices = devices[:math.prod(shape)]
  return model_lib.make_mesh(tuple(shape), devices)


def start(params: dict, cfg: ModelConfig, *, model_name: str, host: str = "127.0.0.1", port: int = 0,
          max_batch: int = 8, max_queue: int = 64, cache_len: int | None = None, chunk: int = 8, mesh=None,
          api_key: str = "", log_path: str | None = None, warm_up: bool = True) -> Server:
  """An engine and its HTTP server, serving on a daemon thread; server.url is its /v1 base."""
  engine = Engine(params, cfg, max_batch=max_batch, max_queue=max_queue, cache_len=cache_len or cfg.max_seq_len,
                  chunk=chunk, mesh=mesh)
  if warm_up:
    engine.warm_up()
  server = Server((host, port), engine, model_name, Metrics(log_path), api_key)
  server.url = f"http://{host}:{server.server_address[1]}/v1"
  server.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                   name="serve-http", daemon=True)
  server.thread.start()
  return server


def drain(server: Server, drain_s: float) -> bool:
  """Refuses new generation requests (503), waits up to drain_s for those in flight, then stops
  the listener and the engine; True when every request finished in time (the rest are cancelled)."""
  server.draining.set()
  finished = server.wait_idle(drain_s)
  if not finished:
    with server.engine.cond:
      rows = [r for r in server.engine.rows if r is not None] + list(server.engine.waiting)
    for row in rows:
      row.job.cancel()
    server.wait_idle(5.0)
  server.shutdown()
  server.server_close()
  server.engine.close()
  return finished


def run_until_signalled(server: Server, drain_s: float) -> int:
  """Serves until SIGTERM or SIGINT, then drains; the exit status (0)."""
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  while not stop.wait(1.0):
    pass
  print(f"serve: draining (up to {drain_s:g} s for requests in flight)", file=sys.stderr, flush=True)
  finished = drain(server, drain_s)
  print(f"serve: stopped ({'all requests finished' if finished else 'requests cut at --drain_s'})",
        file=sys.stderr, flush=True)
  return 0

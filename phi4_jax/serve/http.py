"""The HTTP side: routes, the bearer key, errors in OpenAI's shape, server-sent events, disconnects.

  GET  /health  /v1/models  /metrics  /tokenizer_info
  POST /v1/completions  /v1/chat/completions  /tokenize  /detokenize

On the standard library's ThreadingHTTPServer: one thread per connection waits on its request's
events while the engine's scheduler thread decodes. A handler that finds its client gone (a write
fails, or the socket reads as closed while it waits) cancels its request, which frees its slots at
the scheduler's next turn. /tokenizer_info, /tokenize and /detokenize are vLLM's, which lm-eval's
`local-completions` model uses as its "remote" tokenizer.
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import queue
import select
import socket
import threading
import time

from phi4_jax.serve import protocol, scoring
from phi4_jax.serve.engine import Job, Sampling
from phi4_jax.serve.generation import Generation
from phi4_jax.serve.protocol import TOKENIZER, APIError, bad
from phi4_jax.tokenizer import ENDOFTEXT, IM_END, PAD

MAX_BODY = 32 << 20
POLL_S = 0.2  # how often a waiting handler checks that its client is still there
# The ChatML template (tokenizer.apply_chat_template) as Jinja, for /tokenizer_info's clients.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_sep|>{{ m['content'] }}<|im_end|>"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}")


class Server(http.server.ThreadingHTTPServer):
  """The listening server with what its handlers share."""

  daemon_threads = True
  request_queue_size = 1024  # the listen backlog (socketserver's 5 resets a burst of 32 clients' connects)

  def __init__(self, address, engine, model_name: str, metrics, api_key: str = ""):
    super().__init__(address, Handler)
    self.engine, self.model_name, self.metrics, self.api_key = engine, model_name, metrics, api_key
    self.draining = threading.Event()
    self.inflight = 0
    self.inflight_cond = threading.Condition()
    self.created = int(time.time())

  def wait_idle(self, timeout_s: float) -> bool:
    """Waits until no generation request is in flight (True) or timeout_s passed (False)."""
    deadline = time.monotonic() + timeout_s
    with self.inflight_cond:
      while self.inflight:
        if not self.inflight_cond.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
          return False
    return True


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  server: Server

  def log_message(self, *args):  # (the request log is metrics.record's JSON lines)
    pass

  def do_GET(self):
    self._serve({"/health": self._health, "/v1/models": self._models, "/metrics": self._metrics,
                 "/tokenizer_info": self._tokenizer_info})

  def do_POST(self):
    self._serve({"/v1/completions": self._completions, "/v1/chat/completions": self._chat,
                 "/tokenize": self._tokenize, "/detokenize": self._detokenize})

  # -- plumbing ---------------------------------------------------------------------------------
  def _serve(self, routes: dict) -> None:
    self.start, self.entry = time.monotonic(), {}
    path = self.path.split("?")[0].rstrip("/") or "/"
    status = 500
    try:
      if path not in routes:
        raise APIError(404, f"no route {self.command} {path}", code="not_found")
      if path not in ("/health", "/metrics"):
        self._authorize()
      status = routes[path]() or 200
    except APIError as e:
      status = e.status
      self._send_json(e.status, e.body(), e.headers)
    except (BrokenPipeError, ConnectionResetError):
      status = 499  # (the client went away)
    except Exception as e:  # (an unexpected failure is a 500 in the API's shape, and logged)
      logging.exception("serve: %s %s failed", self.command, path)
      status = 500
      self._send_json(500, APIError(500, f"internal error: {type(e).__name__}", type="server_error").body())
    finally:
      if path in ("/v1/completions", "/v1/chat/completions"):
        self.server.metrics.record({"endpoint": path, "status": status,
                                    "latency_s": round(time.monotonic() - self.start, 4), **self.entry})

  def _authorize(self) -> None:
    key = self.server.api_key
    if key and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {key}"):
      raise APIError(401, "missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key")

  def _body(self) -> dict:
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      raise APIError(411, "a request body needs Content-Length") from None
    if length > MAX_BODY:
      raise APIError(413, f"request body over {MAX_BODY} bytes")
    try:
      body = json.loads(self.rfile.read(length) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise APIError(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
      raise APIError(400, "the body must be a JSON object")
    return body

  def _send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
      self.send_header(name, value)
    self.end_headers()
    self.wfile.write(data)

  def _peer_closed(self) -> bool:
    """Whether the client closed its end (a readable socket with nothing to read)."""
    try:
      readable, _, _ = select.select([self.connection], [], [], 0)
      return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
      return True

  # -- small routes -----------------------------------------------------------------------------
  def _health(self):
    if self.server.draining.is_set():
      self._send_json(503, {"status": "draining"})
      return 503
    self._send_json(200, {"status": "ok"})

  def _models(self):
    srv = self.server
    self._send_json(200, {"object": "list", "data": [{
        "id": srv.model_name, "object": "model", "created": srv.created, "owned_by": "phi4_jax",
        "max_model_len": min(srv.engine.cfg.max_seq_len, srv.engine.cache_len)}]})

  def _metrics(self):
    data = self.server.metrics.render(self.server.engine).encode()
    self.send_response(200)
    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _tokenizer_info(self):
    self._send_json(200, {"eos_token": IM_END, "bos_token": ENDOFTEXT, "pad_token": PAD,
                          "chat_template": CHATML, "model_max_length": self.server.engine.cfg.max_seq_len,
                          "tokenizer_class": "phi4_jax-cl100k"})

  def _tokenize(self):
    body = self._body()
    if "messages" in body:
      ids = protocol.chat_request({"messages": body["messages"]}).prompts[0]
    elif isinstance(body.get("prompt"), str):
      ids = TOKENIZER.encode(body["prompt"], allowed_special="all")
    else:
      raise bad("prompt", "prompt: expected a string (or give messages)")
    self._send_json(200, {"tokens": ids, "count": len(ids),
                          "max_model_len": self.server.engine.cfg.max_seq_len})

  def _detokenize(self):
    ids = self._body().get("tokens")
    if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < TOKENIZER.vocab_size for t in ids):
      raise bad("tokens", "tokens: expected a list of token ids")
    self._send_json(200, {"prompt": TOKENIZER.decode(ids)})

  # -- generation -------------------------------------------------------------------------------
  def _completions(self):
    return self._generate(protocol.completion_request, "/v1/completions")

  def _chat(self):
    return self._generate(protocol.chat_request, "/v1/chat/completions")

  def _generate(self, parse, endpoint: str):
    srv = self.server
    if srv.draining.is_set():
      raise APIError(503, "the server is shutting down", type="service_unavailable", code="draining")
    req = parse(self._body())
    if req.model not in (None, "", srv.model_name):
      raise APIError(404, f"model {req.model!r} is not served here (GET /v1/models: {srv.model_name!r})",
                     param="model", code="model_not_found")
    with srv.inflight_cond:
      srv.inflight += 1
    try:
      return self._run(req)
    finally:
      with srv.inflight_cond:
        srv.inflight -= 1
        srv.inflight_cond.notify_all()

  def _run(self, req: protocol.Request):
    srv, engine = self.server, self.server.engine
    budgets = [req.max_tokens if req.max_tokens is not None else max(engine.room(len(p)), 1)
               for p in req.prompts]
    for i, (ids, budget) in enumerate(zip(req.prompts, budgets)):
      try:
        engine.check(ids, budget, what="prompt" if req.kind == "completion" else "messages")
      except ValueError as e:
        raise bad(*e.args) from None
    if len(req.prompts) * req.n > engine.capacity():
      raise bad("n", f"n: {len(req.prompts) * req.n} choices exceed the server's slots and queue "
                f"({engine.capacity()})")
    if req.stream and req.echo and req.logprobs is not None:
      raise bad("echo", "echo: prompt log-probs are not streamed (use stream: false)")
    scores = None
    if req.echo and req.logprobs is not None:
      scores = [scoring.prompt_logprobs(engine.params, engine.cfg, ids, req.logprobs, engine.mesh)
                for ids in req.prompts]
    gen = Generation(req, srv.model_name, scores)
    self.entry = {"prompt_tokens": sum(map(len, req.prompts)), "stream": req.stream}
    if budgets[0] > 0:
      gen.jobs = [Job(ids, req.n, _sampling(req, budget, engine.cfg.vocab_size), gen.listener(i))
                  for i, (ids, budget) in enumerate(zip(req.prompts, budgets))]
      if not engine.submit(gen.jobs):
        raise APIError(429, f"the server's queue is full ({engine.max_queue} waiting); retry later",
                       type="rate_limit_exceeded", code="rate_limit_exceeded", headers={"Retry-After": "1"})
    return self._stream(gen) if req.stream else self._whole(gen)

  def _whole(self, gen: Generation):
    finished = 0 if gen.jobs else gen.total
    while finished < gen.total:
      try:
        finished += gen.events.get(timeout=POLL_S)[0] == "finish"
      except queue.Empty:
        if self._peer_closed():
          return self._cancelled(gen)
    self._done(gen)
    if "error" in gen.reasons:
      raise APIError(500, "generation failed (see the server's log)", type="server_error")
    self._send_json(200, gen.response())

  def _stream(self, gen: Generation):
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Cache-Control", "no-cache")
    self.send_header("Connection", "close")
    self.end_headers()
    self.close_connection = True
    finished = 0
    try:
      while finished < gen.total:
        try:
          events = [gen.events.get(timeout=POLL_S)]
        except queue.Empty:
          if self._peer_closed():
            return self._cancelled(gen)
          continue
        while not gen.events.empty():
          events.append(gen.events.get_nowait())
        finished += sum(e[0] == "finish" for e in events)
        self._events([c for e in events for c in gen.chunks(e)])
      self._events([gen.usage_chunk()], done=True)
    except OSError:  # (the client went away mid-stream)
      return self._cancelled(gen)
    self._done(gen)

  def _events(self, chunks: list[dict], done: bool = False) -> None:
    data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + ("data: [DONE]\n\n" if done else "")
    self.wfile.write(data.encode())
    self.wfile.flush()

  def _done(self, gen: Generation) -> None:
    ttft = gen.ttft()
    self.entry.update(completion_tokens=gen.usage()["completion_tokens"],
                      ttft_s=None if ttft is None else round(ttft, 4), finish_reasons=gen.reasons)

  def _cancelled(self, gen: Generation) -> int:
    gen.cancel()
    self.close_connection = True
    self.entry.update(cancelled=True, completion_tokens=sum(len(t.ids) for t in gen.texts))
    return 499


def _sampling(req: protocol.Request, budget: int, vocab_size: int) -> Sampling:
  return Sampling(max_new=budget, temperature=req.temperature, top_k=min(req.top_k, vocab_size),
                  top_p=req.top_p, seed=req.seed, stop_ids=req.stop_ids(), logprobs=req.logprobs is not None)

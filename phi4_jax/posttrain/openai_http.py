"""A minimal client for OpenAI-compatible chat endpoints (`POST {base}/chat/completions`).

  endpoint = Endpoint.parse("http://host:8000/v1,model=NAME")   # API key from $OPENAI_API_KEY
  text = endpoint.chat(messages, temperature=0.7, max_tokens=512)

Timeouts, HTTP 429/5xx and malformed bodies are retried with exponential backoff (`retries` times),
waiting at least what a `Retry-After` header asks (up to MAX_RETRY_AFTER_S), then raised as
EndpointError naming the endpoint and the last failure; other 4xx are not retried. `timeout_s`
bounds a whole request (connect, headers and body), not each socket read: a server that drips
bytes is cut off. Redirects are not followed (the bearer key goes to the endpoint's own origin
only). Callers bound concurrency with `map_concurrently`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse

MAX_RETRY_AFTER_S = 600.0  # the longest Retry-After honoured


def _retry_after(value: str | None) -> float:
  """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date); 0 without one."""
  if not value:
    return 0.0
  try:
    return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
  except ValueError:
    try:
      return min(max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError):
      return 0.0


class EndpointError(RuntimeError):
  """A request that failed after its retries (or was refused outright)."""


class _HTTPStatus(Exception):
  """A response with a status other than 2xx."""

  def __init__(self, code: int, headers: http.client.HTTPMessage):
    super().__init__(f"HTTP {code}")
    self.code, self.retry_after, self.location = code, _retry_after(headers.get("Retry-After")), headers.get("Location")


@dataclasses.dataclass(frozen=True)
class Endpoint:
  base_url: str  # e.g. http://127.0.0.1:8000/v1
  model: str
  api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("" = none)
  timeout_s: float = 60.0
  retries: int = 3
  backoff_s: float = 1.0  # first retry's wait; doubled each time

  @classmethod
  def parse(cls, spec: str, **overrides) -> "Endpoint":
    """`URL,model=NAME[,api_key_env=VAR][,timeout_s=S][,retries=N]`."""
    url, *options = spec.split(",")
    if not url.startswith(("http://", "https://")):
      raise ValueError(f"{spec!r}: an endpoint starts with http:// or https://")
    kwargs = {}
    for option in options:
      key, sep, value = option.partition("=")
      if not sep or key not in ("model", "api_key_env", "timeout_s", "retries", "backoff_s"):
        raise ValueError(f"{spec!r}: unknown option {option!r} (model=, api_key_env=, timeout_s=, retries=)")
      kind = {"timeout_s": float, "backoff_s": float, "retries": int}.get(key, str)
      try:
        kwargs[key] = kind(value)
      except ValueError:
        raise ValueError(f"{spec!r}: {key}={value!r} is not {'an integer' if kind is int else 'a number'}") from None
    if "model" not in kwargs:
      raise ValueError(f"{spec!r}: needs model=NAME")
    endpoint = cls(url.rstrip("/"), **{**kwargs, **overrides})
    if endpoint.retries < 0 or not endpoint.timeout_s > 0 or endpoint.backoff_s < 0:
      raise ValueError(f"{spec!r}: retries must be >= 0, timeout_s > 0 and backoff_s >= 0")
    return endpoint

  def _request(self, body: dict) -> dict:
    """One POST, whole within timeout_s (a timer shuts the socket at the deadline)."""
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
    if key:
      headers["Authorization"] = f"Bearer {key}"
    url = urllib.parse.urlsplit(f"{self.base_url}/chat/completions")
    connection = (http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection)(
        url.hostname, url.port, timeout=self.timeout_s)
    expired = threading.Event()
    timer = threading.Timer(self.timeout_s, _cut, (connection, expired))
    timer.start()
    try:
      connection.request("POST", url.path + (f"?{url.query}" if url.query else ""), json.dumps(body).encode(),
                         headers)
      response = connection.getresponse()
      data = response.read()
    except (OSError, http.client.HTTPException):
      if expired.is_set():
        raise TimeoutError(f"no whole response within timeout_s={self.timeout_s}") from None
      raise
    finally:
      timer.cancel()
      connection.close()
    if not 200 <= response.status < 300:
      raise _HTTPStatus(response.status, response.headers)
    return json.loads(data)

  def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int = 512,
           seed: int | None = None) -> str:
    """The first choice's message content (`seed`: the OpenAI API's per-request sampling seed)."""
    body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    if seed is not None:
      body["seed"] = seed
    last, wait = "", 0.0
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(max(self.backoff_s * 2 ** (attempt - 1), wait))
      wait = 0.0
      try:
        content = self._request(body)["choices"][0]["message"]["content"]
        if isinstance(content, str):
          return content
        last = "malformed body: content is not a string"
      except _HTTPStatus as e:
        last, wait = f"HTTP {e.code}", e.retry_after
        if 300 <= e.code < 400:
          last += f" (a redirect to {e.location or 'nowhere'}: not followed)"
        if e.code != 429 and e.code < 500:
          break
      except (OSError, socket.timeout, TimeoutError, http.client.HTTPException) as e:
        last = f"{type(e).__name__}: {e}"
      except (ValueError, KeyError, IndexError, TypeError) as e:
        last = f"malformed body: {type(e).__name__}"
    raise EndpointError(f"{self.base_url} ({self.model}): {last} after {attempt + 1} attempt(s)")


def _cut(connection: http.client.HTTPConnection, expired: threading.Event) -> None:
  """At a request's deadline: shut its socket, so the read in progress returns at once."""
  expired.set()
  if connection.sock is not None:
    try:
      connection.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass


def map_concurrently(fn, items: list, concurrency: int) -> list:
  """[fn(item)] in order, at most `concurrency` at a time; an item's exception is returned, not raised."""
  def guarded(item):
    try:
      return fn(item)
    except Exception as e:  # (reported per item by the caller)
      return e
  with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
    return list(pool.map(guarded, items))

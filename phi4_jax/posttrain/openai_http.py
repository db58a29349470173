"""A minimal client for OpenAI-compatible chat endpoints (`POST {base}/chat/completions`).

  endpoint = Endpoint.parse("http://host:8000/v1,model=NAME")   # API key from $OPENAI_API_KEY
  text = endpoint.chat(messages, temperature=0.7, max_tokens=512)

Timeouts, HTTP 429/5xx and malformed bodies are retried with exponential backoff (`retries` times),
then raised as EndpointError naming the endpoint and the last failure; other 4xx are not retried.
Callers bound concurrency with `map_concurrently`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request


class EndpointError(RuntimeError):
  """A request that failed after its retries (or was refused outright)."""


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
      kwargs[key] = {"timeout_s": float, "backoff_s": float, "retries": int}.get(key, str)(value)
    if "model" not in kwargs:
      raise ValueError(f"{spec!r}: needs model=NAME")
    endpoint = cls(url.rstrip("/"), **{**kwargs, **overrides})
    if endpoint.retries < 0 or not endpoint.timeout_s > 0 or endpoint.backoff_s < 0:
      raise ValueError(f"{spec!r}: retries must be >= 0, timeout_s > 0 and backoff_s >= 0")
    return endpoint

  def _request(self, body: dict) -> dict:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
    if key:
      headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"{self.base_url}/chat/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
      return json.loads(response.read())

  def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int = 512) -> str:
    """The first choice's message content."""
    body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    last = ""
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      try:
        content = self._request(body)["choices"][0]["message"]["content"]
        if isinstance(content, str):
          return content
        last = "malformed body: content is not a string"
      except urllib.error.HTTPError as e:
        last = f"HTTP {e.code}"
        if e.code != 429 and e.code < 500:
          break
      except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
              http.client.HTTPException) as e:
        last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
      except (ValueError, KeyError, IndexError, TypeError) as e:
        last = f"malformed body: {type(e).__name__}"
    raise EndpointError(f"{self.base_url} ({self.model}): {last} after {attempt + 1} attempt(s)")


def map_concurrently(fn, items: list, concurrency: int) -> list:
  """[fn(item)] in order, at most `concurrency` at a time; an item's exception is returned, not raised."""
  def guarded(item):
    try:
      return fn(item)
    except Exception as e:  # (reported per item by the caller)
      return e
  with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
    return list(pool.map(guarded, items))

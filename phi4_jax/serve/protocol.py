"""The OpenAI API's request bodies, checked field by field, and its error shape.

`completion_request` and `chat_request` turn a JSON body into a `Request` (token ids per prompt and
the settings) or raise `APIError` 400 naming the bad field as its `param`. Completions take
`prompt` as a text, a list of texts, a list of token ids or a list of such lists; text is
tokenized as `/tokenize` does (special-token text becomes the special token; no <|endoftext|> is
added). Chat takes `messages` through the ChatML template with the generation prompt.
"""

from __future__ import annotations

import dataclasses
import secrets

from phi4_jax.tokenizer import Phi4Tokenizer, check_messages

TOKENIZER = Phi4Tokenizer()
MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
  """An error response: {"error": {"message", "type", "param", "code"}} with this HTTP status."""

  def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
    self.headers = headers or {}

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> APIError:
  return APIError(400, message, param=param, code="invalid_value")


@dataclasses.dataclass
class Request:
  kind: str  # "completion" or "chat"
  prompts: list[list[int]]
  max_tokens: int | None  # None: as many as the context leaves
  n: int = 1
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  seed: int = 0
  stop: list[str] = dataclasses.field(default_factory=list)
  logprobs: int | None = None  # top alternatives per token (0: only the token's own); None: off
  echo: bool = False
  stream: bool = False
  ignore_eos: bool = False
  model: str | None = None

  def stop_ids(self) -> tuple[int, ...]:
    if self.ignore_eos:
      return ()
    return TOKENIZER.chat_stops if self.kind == "chat" else TOKENIZER.plain_stops


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _int(body: dict, name: str, default, low: int, high: int | None = None):
  value = body.get(name)
  if value is None:
    return default
  if not _is_int(value) or value < low or (high is not None and value > high):
    span = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise bad(name, f"{name}: expected an integer {span}, got {value!r:.40}")
  return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
  value = body.get(name)
  if value is None:
    return default
  if (not isinstance(value, (int, float)) or isinstance(value, bool) or value > high
      or value < low or (low_open and value == low)):
    raise bad(name, f"{name}: expected a number in {'(' if low_open else '['}{low}, {high}], got {value!r:.40}")
  return float(value)


def _bool(body: dict, name: str, default: bool = False) -> bool:
  value = body.get(name, default)
  if value is None:
    return default
  if not isinstance(value, bool):
    raise bad(name, f"{name}: expected true or false, got {value!r:.40}")
  return value


def _stop(body: dict) -> list[str]:
  stop = body.get("stop")
  if stop is None:
    return []
  stops = [stop] if isinstance(stop, str) else stop
  if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
    raise bad("stop", f"stop: expected a non-empty string or a list of up to {MAX_STOPS} of them")
  return stops


def _common(body: dict, kind: str, prompts: list[list[int]], max_tokens) -> Request:
  if not isinstance(body.get("model", ""), str):
    raise bad("model", "model: expected a string")
  top_k = body.get("top_k")
  seed = body.get("seed")
  if seed is not None and not _is_int(seed):
    raise bad("seed", f"seed: expected an integer, got {seed!r:.40}")
  return Request(
      kind=kind, prompts=prompts, max_tokens=max_tokens, n=_int(body, "n", 1, 1, 128),
      temperature=_number(body, "temperature", 1.0, 0.0, 100.0),
      top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
      top_k=0 if top_k == -1 else _int(body, "top_k", 0, 0, TOKENIZER.vocab_size),
      seed=secrets.randbits(32) if seed is None else seed % 2**32, stop=_stop(body),
      stream=_bool(body, "stream"), ignore_eos=_bool(body, "ignore_eos"), model=body.get("model"))


def _prompts(prompt) -> list[list[int]]:
  """Token ids of each prompt of a completions body's `prompt`."""
  ids_list = lambda p: isinstance(p, list) and p and all(_is_int(t) for t in p)
  if isinstance(prompt, str):
    prompts = [prompt]
  elif ids_list(prompt):
    return [prompt]
  elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or ids_list(p) for p in prompt):
    prompts = prompt
  else:
    raise bad("prompt", "prompt: expected a string, a list of strings, a list of token ids or a list of "
              f"token-id lists (none empty), got {str(prompt)[:60]!r}")
  out = [p if isinstance(p, list) else TOKENIZER.encode(p, allowed_special="all") for p in prompts]
  if not all(out):
    raise bad("prompt", "prompt: an empty text has no tokens to continue")
  return out


def completion_request(body: dict) -> Request:
  if "prompt" not in body:
    raise bad("prompt", "prompt: required")
  req = _common(body, "completion", _prompts(body["prompt"]), _int(body, "max_tokens", 16, 0))
  req.logprobs = _int(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
  req.echo = _bool(body, "echo")
  if req.max_tokens == 0 and not req.echo:
    raise bad("max_tokens", "max_tokens: 0 is only for echo (prompt log-probs without new tokens)")
  if req.max_tokens == 0 and req.stream:
    raise bad("stream", "stream: not with max_tokens 0 (nothing is generated)")
  return req


def _content(message):
  """A message with text parts ([{"type": "text", "text"}]) joined into one string."""
  content = message.get("content") if isinstance(message, dict) else None
  if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
    return {**message, "content": "".join(str(p.get("text", "")) for p in content)}
  if content is None and isinstance(message, dict) and message.get("role") == "assistant":
    return {**message, "content": ""}
  return message


def chat_request(body: dict) -> Request:
  messages = body.get("messages")
  if not isinstance(messages, list) or not messages:
    raise bad("messages", "messages: expected a non-empty list of {role, content} messages")
  messages = [_content(m) for m in messages]
  try:
    check_messages(messages)
  except ValueError as e:
    raise bad("messages", str(e)) from None
  ids = TOKENIZER.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
  name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
  req = _common(body, "chat", [ids], _int({name: max_tokens}, name, None, 1))
  if _bool(body, "logprobs"):
    req.logprobs = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
  elif body.get("top_logprobs") is not None:
    raise bad("top_logprobs", "top_logprobs: needs logprobs: true")
  if body.get("tools"):
    raise bad("tools", "tools: function calling is not served")
  response_format = body.get("response_format") or {"type": "text"}
  if not isinstance(response_format, dict) or response_format.get("type", "text") != "text":
    raise bad("response_format", "response_format: structured outputs are not served (only text)")
  return req

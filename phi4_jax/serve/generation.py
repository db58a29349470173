"""One HTTP request's generation: its jobs' listener, the events its handler waits on, and the
OpenAI response bodies (whole, or as stream chunks) built from its choices.

The engine calls `token` and `finish` on its scheduler thread; every stream delta is computed
there (ChoiceText is touched by that thread only until the choice finishes) and queued as an
event for the handler's thread: ("delta", choice, text, entries) and ("finish", choice, reason,
text, entries).
"""

from __future__ import annotations

import queue
import time
import uuid

from phi4_jax.serve import text as text_lib
from phi4_jax.serve.protocol import TOKENIZER, Request


class Generation:
  def __init__(self, req: Request, model: str, prompt_scores: list | None = None):
    self.req, self.model = req, model
    self.prompt_scores = prompt_scores  # echo with logprobs: per prompt (logprobs, top, top ids)
    self.total = len(req.prompts) * req.n
    self.texts = [text_lib.ChoiceText(req.stop) for _ in range(self.total)]
    self.reasons: list[str | None] = [None] * self.total
    self.events: queue.Queue = queue.Queue()
    self.jobs: list = []
    self.start = time.monotonic()
    self.first_token: float | None = None
    self.id = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    self.created = int(time.time())

  def listener(self, prompt_index: int) -> "_Listener":
    return _Listener(self, prompt_index * self.req.n)

  # -- the scheduler thread's side ------------------------------------------------------------
  def token(self, index: int, token: int, logprob, is_stop_id: bool) -> bool:
    if self.first_token is None:
      self.first_token = time.monotonic()
    stopped = self.texts[index].add(token, logprob, is_stop_id)
    if self.req.stream and not stopped:
      text, entries = self.texts[index].delta(final=False)
      if text or (entries and self.req.logprobs is not None):
        self.events.put(("delta", index, text, entries))
    return stopped

  def finish(self, index: int, reason: str) -> None:
    self.reasons[index] = reason
    text, entries = self.texts[index].delta(final=True)
    self.events.put(("finish", index, reason, text, entries))

  def cancel(self) -> None:
    for job in self.jobs:
      job.cancel()

  # -- the handler thread's side --------------------------------------------------------------
  def usage(self) -> dict:
    prompt = sum(len(p) for p in self.req.prompts)
    completion = sum(len(t.ids) for t in self.texts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

  def ttft(self) -> float | None:
    return None if self.first_token is None else self.first_token - self.start

  def _prompt_text(self, index: int) -> str:
    return TOKENIZER.decode(self.req.prompts[index // self.req.n]) if self.req.echo else ""

  def _logprobs(self, index: int, entries: list, with_prompt: bool):
    if self.req.logprobs is None:
      return None
    k = self.req.logprobs
    if self.req.kind == "chat":
      return text_lib.chat_logprobs(entries, k)
    prompt = None
    if with_prompt and self.req.echo:
      ids = self.req.prompts[index // self.req.n]
      prompt = (ids, *self.prompt_scores[index // self.req.n])
    return text_lib.completion_logprobs(entries, k, prompt)

  def response(self) -> dict:
    """The whole (non-streamed) response."""
    choices = []
    for i, t in enumerate(self.texts):
      reason = self.reasons[i] or "length"  # (max_tokens 0: nothing generated)
      lps = self._logprobs(i, t.entries, with_prompt=True)
      if self.req.kind == "chat":
        choices.append({"index": i, "message": {"role": "assistant", "content": t.text}, "logprobs": lps,
                        "finish_reason": reason})
      else:
        choices.append({"index": i, "text": self._prompt_text(i) + t.text, "logprobs": lps,
                        "finish_reason": reason})
    return {**self._head(), "choices": choices, "usage": self.usage()}

  def _head(self, chunk: bool = False) -> dict:
    kind = "text_completion"
    if self.req.kind == "chat":
      kind = "chat.completion.chunk" if chunk else "chat.completion"
    return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

  def chunks(self, event) -> list[dict]:
    """Stream chunks for one event (a choice's first event also opens it: role, or echoed prompt)."""
    kind, index, *rest = event
    reason, text, entries = (rest if kind == "finish" else (None, *rest))
    opening = not self.texts[index].opened
    self.texts[index].opened = True
    lps = self._logprobs(index, entries, with_prompt=False) if entries else None
    if self.req.kind == "chat":
      out = [{**self._head(True), "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                               "logprobs": None, "finish_reason": None}]}] if opening else []
      delta = {"content": text} if text else {}
      if text or lps or reason:
        out.append({**self._head(True), "choices": [{"index": index, "delta": delta, "logprobs": lps,
                                                     "finish_reason": reason}]})
      return out
    text = (self._prompt_text(index) if opening else "") + text
    choice = {"index": index, "text": text, "logprobs": lps, "finish_reason": reason}
    return [{**self._head(), "choices": [choice]}]

  def usage_chunk(self) -> dict:
    return {**self._head(chunk=True), "choices": [], "usage": self.usage()}


class _Listener:
  """The engine's listener of one job (one prompt): its choices are the request's base + c."""

  def __init__(self, generation: Generation, base: int):
    self.generation, self.base = generation, base

  def token(self, choice: int, token: int, logprob, is_stop_id: bool) -> bool:
    return self.generation.token(self.base + choice, token, logprob, is_stop_id)

  def finish(self, choice: int, reason: str) -> None:
    self.generation.finish(self.base + choice, reason)

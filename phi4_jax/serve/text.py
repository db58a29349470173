"""One choice's text as its tokens arrive: stop strings, what a stream may send yet, and logprobs.

A stop id ends the choice without adding text; a stop string ends it with the text cut before the
string. A stream sends only text that can no longer change: not a trailing incomplete UTF-8
character, nor a tail that could still grow into a stop string; what it has sent when the choice
ends is exactly the non-streamed text.
"""

from __future__ import annotations

from collections.abc import Sequence

from phi4_jax.tokenizer import Phi4Tokenizer

TOKENIZER = Phi4Tokenizer()


def token_bytes(token: int) -> bytes:
  return TOKENIZER.decode_bytes([token])


def token_string(token: int) -> str:
  """A token's text; a token that is part of a UTF-8 character is `bytes:\\xNN...` (as vLLM spells it)."""
  raw = token_bytes(token)
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class ChoiceText:
  """Tokens in (`add`), text and stream deltas out; `entries` keeps each token's logprob entry."""

  def __init__(self, stops: Sequence[str]):
    self.stops = [s for s in stops if s]
    self.ids: list[int] = []
    self.entries: list[tuple] = []  # (token, is_stop_id, (logprob, top logprobs, top ids) or None)
    self.raw = b""
    self.text = ""
    self.sent = 0  # characters of text already streamed
    self.entries_sent = 0
    self.stopped = False
    self.opened = False  # (a stream has sent this choice's first chunk)

  def add(self, token: int, logprob, is_stop_id: bool) -> bool:
    """Takes one token; True when a stop string ends the choice here."""
    self.ids.append(token)
    self.entries.append((token, is_stop_id, logprob))
    if is_stop_id or self.stopped:
      return False
    before = len(self.text)
    self.raw += token_bytes(token)
    self.text = self.raw.decode("utf-8", "replace")
    longest = max((len(s) for s in self.stops), default=0)
    found = [i for i in (self.text.find(s, max(0, before - longest)) for s in self.stops) if i >= 0]
    if found:
      self.text, self.stopped = self.text[:min(found)], True
    return self.stopped

  def _settled(self) -> int:
    """How much of the text can no longer change."""
    end = len(self.text)
    while end > self.sent and self.text[end - 1] == "\ufffd":
      end -= 1
    for s in self.stops:
      for n in range(min(len(s) - 1, end), 0, -1):
        if self.text[:end].endswith(s[:n]):
          end -= n
          break
    return max(end, self.sent)

  def delta(self, final: bool) -> tuple[str, list[tuple]]:
    """(text not yet streamed, logprob entries not yet streamed); `final`: everything."""
    end = len(self.text) if final or self.stopped else self._settled()
    text, self.sent = self.text[self.sent:end], end
    entries, self.entries_sent = self.entries[self.entries_sent:], len(self.entries)
    return text, entries


def completion_logprobs(entries: list[tuple], k: int, prompt=None, offset: int = 0) -> dict:
  """The completions API's logprobs object: tokens, token_logprobs, top_logprobs, text_offset.
  `prompt` (echo): (ids, their logprobs [T-1], top [T-1, k], top ids [T-1, k]) first, its first
  token without a log-prob."""
  out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
  rows = []
  if prompt is not None:
    ids, lps, tops, top_ids = prompt
    rows.append((ids[0], None, None))
    rows += [(t, float(lp), dict(_top(top, top_id, k)))
             for t, lp, top, top_id in zip(ids[1:], lps, tops, top_ids)]
  rows += [(t, e and e[0], e and dict(_top(e[1], e[2], k))) for t, _, e in entries]
  for token, lp, top in rows:
    out["tokens"].append(token_string(token))
    out["token_logprobs"].append(lp)
    out["top_logprobs"].append(top)
    out["text_offset"].append(offset)
    offset += len(token_bytes(token).decode("utf-8", "replace"))
  return out


def chat_logprobs(entries: list[tuple], k: int) -> dict:
  """The chat API's logprobs object: one {token, logprob, bytes, top_logprobs} per content token."""
  content = []
  for token, is_stop_id, e in entries:
    if is_stop_id or e is None:
      continue
    content.append({"token": token_string(token), "logprob": e[0], "bytes": list(token_bytes(token)),
                    "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(token_bytes(t))}
                                     for (s, lp), t in zip(_top(e[1], e[2], k), e[2][:k])]})
  return {"content": content}


def _top(top_lps, top_ids, k: int) -> list[tuple[str, float]]:
  return [(token_string(int(t)), float(lp)) for lp, t in zip(top_lps[:k], top_ids[:k])]

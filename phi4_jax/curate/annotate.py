"""Quality annotations: a sample of documents scored 0-5 on educational value and reasoning depth.

The judge is `rule` (rule_judge below: a documented stand-in at colab scale, as the PTS stage's
oracle is) or a generator spec (synth/generator.py: our sampler on a workdir or an HF folder, or an
OpenAI-compatible endpoint `http://host:port/v1,model=NAME`) asked with rubric.txt. A verdict must
hold an `educational_value: N` and a `reasoning: N` line, N in 0..5 (protocol.parse_scores); one
that does not is asked again up to `retries` times, sampled at temperature 0.7 so that it can
differ, then the document is counted as unparsable and left out. Every annotation also carries the
document's `topic` (topics.rule_topic's keyword verdict), which a topic classifier learns.

The sample is the `sample` documents of smallest hash of (seed, id), in input order. Documents are
judged docs_per_round at a time, each round logged (OUT/log/annotate.jsonl, one line per document)
before the next starts, so a killed run resumes where it stopped; OUT/annotations.jsonl

  {"id", "text", "educational_value", "reasoning", "topic", "judge", "rubric_version"}

and OUT/annotate_summary.json are rewritten from the log at the end (the same bytes however often
the run was interrupted). The run's fingerprint (judge, sample, settings, rubric version) sits
beside the annotations; a rerun with another is refused unless `overwrite`.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from importlib import resources

from phi4_jax import fields
from phi4_jax.curate import topics
from phi4_jax.posttrain.refusal import sections
from phi4_jax.store import atomic, fingerprint, jsonl_log
from phi4_jax.synth import generator, protocol

FIELDS = fields.Group(
    sample=fields.Field(10_000, fields.integer(0), "documents annotated: a hash-chosen sample (0 = all)"),
    seed=fields.Field(0, fields.integer(0), "chooses the sample and keys the judge's sampling"),
    retries=fields.Field(2, fields.integer(0), "a verdict that does not parse is asked again this many times"),
    max_new_tokens=fields.Field(64, fields.integer(8), "tokens per verdict of a model judge"),
    max_chars=fields.Field(8000, fields.integer(1), "a document's first characters shown to a model judge"),
    concurrency=fields.Field(8, fields.integer(1), "requests in flight to an endpoint judge"),
    max_batch=fields.Field(256, fields.integer(1), "rows our sampler decodes together"),
    docs_per_round=fields.Field(64, fields.integer(1), "documents judged (and logged) together"),
)
BATCHING = ("concurrency", "max_batch", "docs_per_round")  # settings the annotations do not depend on
SCORES = ("educational_value", "reasoning")
RULE_VERSION = 1  # rule_judge's rules: bump when they change


def load_rubric() -> protocol.Prompts:
  """curate/rubric.txt (package data): its version and sections."""
  text = resources.files("phi4_jax.curate").joinpath("rubric.txt").read_text(encoding="utf-8")
  version = re.search(r"^# version: (\d+)$", text, flags=re.MULTILINE)
  if version is None:
    raise ValueError("curate/rubric.txt: no '# version: N' line")
  return protocol.Prompts(int(version.group(1)), sections(text))


RUBRIC = load_rubric()

_DEFINITION = re.compile(r"\b(?:is defined as|are defined as|is called|are called|refers to|is known as|"
                         r"are known as|we define|definition|denotes|is the study of)\b")
_EXAMPLE = re.compile(r"\b(?:for example|for instance|e\.g\.|such as|example|consider)\b")
_STEP = re.compile(r"\b(?:step \d+|first(?:ly)?,|second(?:ly)?,|third(?:ly)?,|then,|next,|finally,)|^\s*\d+[.)]\s",
                   re.MULTILINE)
_EQUATION = re.compile(r"[\w)\]]\s*(?:=|<=|>=|≤|≥|<|>)\s*[-\w(\[√]")
_CONNECTIVE = re.compile(r"\b(?:because|therefore|thus|hence|since|consequently|it follows|implies|"
                         r"so that|which means|as a result)\b")
_BOILERPLATE = re.compile(r"\b(?:click here|subscribe|cookies?|privacy policy|all rights reserved|sign up|"
                          r"log in|buy now|free shipping|advertisement|terms of service|newsletter|"
                          r"share this|add to cart)\b|©")
_BULLET = re.compile(r"^\s*(?:[-*•·>|]|\d+[.)])\s*")


def signals(text: str) -> dict[str, float]:
  """What rule_judge counts in a text (lower-cased): words, prose sentences (8+ words), definitions,
  examples, worked steps, equations, connectives, boilerplate, and the list share: the share of its
  non-blank lines that are bullets or under 6 words."""
  low = text.lower()
  lines = [line for line in low.splitlines() if line.strip()]
  listy = sum(bool(_BULLET.match(line)) or len(line.split()) < 6 for line in lines)
  return {"words": len(low.split()),
          "sentences": sum(len(s.split()) >= 8 for s in re.split(r"[.!?]\s", low)),
          "definitions": len(_DEFINITION.findall(low)), "examples": len(_EXAMPLE.findall(low)),
          "steps": len(_STEP.findall(low)), "equations": len(_EQUATION.findall(low)),
          "connectives": len(_CONNECTIVE.findall(low)), "boilerplate": len(_BOILERPLATE.findall(low)),
          "list_share": listy / len(lines) if lines else 1.0}


def rule_judge(text: str) -> dict[str, int]:
  """{"educational_value", "reasoning"}, each 0-5, by these rules on `signals(text)`:

  educational_value adds a point, as FineWeb-Edu's rubric does, for each of
    basic information   30+ words with 2+ prose sentences (8+ words each)
    introduces concepts 1+ definition or example
    explains            2+ of connectives, equations and worked steps together
    textbook-like       2+ definitions or examples, and 2+ steps or equations
    outstanding         3+ connectives, 100+ words and no boilerplate
  then loses 1 point for 1 boilerplate phrase (click here, subscribe, cookies, ...), 2 for 2 or
  more, and 1 when over half of its lines are list items or fragments (bullets, under 6 words);
  reasoning is min(connectives, 3) + 1 for 2+ worked steps + 1 for 2+ equations, less 1 for a
  list-like text, and at most 1 for a text under 30 words. Both are clipped to 0..5. Deterministic
  and cheap; what it misses: it reads no meaning (a chain of "because" that says nothing scores).
  """
  s = signals(text)
  concepts, worked = s["definitions"] + s["examples"], s["steps"] + s["equations"]
  points = (int(s["words"] >= 30 and s["sentences"] >= 2) + int(concepts >= 1)
            + int(s["connectives"] + worked >= 2) + int(concepts >= 2 and worked >= 2)
            + int(s["connectives"] >= 3 and s["words"] >= 100 and not s["boilerplate"]))
  listy = int(s["list_share"] > 0.5)
  points -= min(s["boilerplate"], 2) + listy
  reasoning = min(s["connectives"], 3) + int(s["steps"] >= 2) + int(s["equations"] >= 2) - listy
  if s["words"] < 30:
    reasoning = min(reasoning, 1)
  return {"educational_value": int(min(max(points, 0), 5)), "reasoning": int(min(max(reasoning, 0), 5))}


def choose(docs: list[dict], sample: int, seed: int) -> list[dict]:
  """The `sample` documents (0 = all) of smallest blake2b hash of (seed, id), in input order;
  ValueError for a document without a string id and text, or an id seen twice."""
  seen = set()
  for n, doc in enumerate(docs):
    if not isinstance(doc.get("id"), str) or not isinstance(doc.get("text"), str):
      raise ValueError(f"document {n}: needs a string `id` and `text`")
    if doc["id"] in seen:
      raise ValueError(f"document {n}: id {doc['id']!r} appears twice")
    seen.add(doc["id"])
  if not sample or sample >= len(docs):
    return list(docs)
  rank = lambda doc: hashlib.blake2b(f"{seed}\0{doc['id']}".encode("utf-8"), digest_size=8).digest()
  picked = {doc["id"] for doc in sorted(docs, key=rank)[:sample]}
  return [doc for doc in docs if doc["id"] in picked]


def paths(out: str) -> dict[str, str]:
  return {"annotations": os.path.join(out, "annotations.jsonl"), "log": os.path.join(out, "log", "annotate.jsonl"),
          "summary": os.path.join(out, "annotate_summary.json")}


def judge_identity(judge: str) -> dict:
  """What scores the documents: the rule judge (its version) or a generator's identity."""
  return {"rule": "rule_judge", "version": RULE_VERSION} if judge == "rule" else generator.identity(judge)


def parse(reply: str) -> dict[str, int] | None:
  return protocol.parse_scores(reply, SCORES, 0, 5)


def judge_round(docs: list[dict], judge, settings) -> list[dict]:
  """One log line per document: {"id", "scores" (None: unparsable), "attempts"}, with the last
  reply of an unparsable one. `judge`: "rule" or a loaded generator; a request that failed raises."""
  if judge == "rule":
    return [{"id": d["id"], "scores": rule_judge(d["text"]), "attempts": 1} for d in docs]
  scores, attempts, last = [None] * len(docs), [0] * len(docs), [""] * len(docs)
  pending = list(range(len(docs)))
  for attempt in range(settings.retries + 1):
    temperature = 0.0 if attempt == 0 else protocol.RETRY_TEMPERATURE
    asks = [generator.Ask(RUBRIC.messages("prompt", educational_value=RUBRIC.sections["educational_value"],
                                          reasoning=RUBRIC.sections["reasoning"],
                                          text=docs[i]["text"][:settings.max_chars]),
                          temperature, settings.max_new_tokens) for i in pending]
    # (the attempt comes before the key's last part: our sampler draws a request's samples from
    # the key without it, and each retry must draw anew)
    keys = [f"{settings.seed}\0annotate\0{docs[i]['id']}\0{attempt}\0only" for i in pending]
    replies = judge.chat(asks, keys)
    failed = [r for r in replies if not isinstance(r, str)]
    if failed:
      raise failed[0]  # (an EndpointError: nothing of this round is logged)
    for i, reply in zip(pending, replies):
      attempts[i], last[i], scores[i] = attempts[i] + 1, reply, parse(reply)
    pending = [i for i in pending if scores[i] is None]
    if not pending:
      break
  return [{"id": d["id"], "scores": s, "attempts": a, **({} if s else {"reply": r[:1000]})}
          for d, s, a, r in zip(docs, scores, attempts, last)]


def annotate(docs: list[dict], judge: str, out: str, settings, overwrite: bool = False,
             progress=sys.stderr) -> dict:
  """Annotates the sample of `docs` ({"id", "text"} each) with `judge` ("rule" or a generator spec)
  into OUT, resuming from its log; returns the summary (also OUT/annotate_summary.json)."""
  FIELDS.check(settings, "annotate", complete=True)
  chosen, p = choose(docs, settings.sample, settings.seed), paths(out)
  identity = judge_identity(judge)
  os.makedirs(os.path.dirname(p["log"]), exist_ok=True)
  fingerprint.claim(p["annotations"], {"judge": identity, "sample": fingerprint.records_identity(chosen),
                                       "settings": fingerprint.settings_identity(settings, BATCHING),
                                       "rubric_version": RUBRIC.version},
                    [p["log"], p["annotations"], p["summary"]], overwrite)
  done = jsonl_log.read(p["log"], "id")
  todo = [d for d in chosen if d["id"] not in done]
  model = judge if judge == "rule" or not todo else generator.load(
      judge, concurrency=settings.concurrency, max_batch=settings.max_batch)
  for start in range(0, len(todo), settings.docs_per_round):
    lines = judge_round(todo[start:start + settings.docs_per_round], model, settings)
    jsonl_log.append(p["log"], lines)
    done.update((line["id"], line) for line in lines)
    if progress:
      print(f"annotate: {len(chosen) - len(todo) + start + len(lines)}/{len(chosen)} documents", file=progress)
  records = [{"id": d["id"], "text": d["text"], **done[d["id"]]["scores"], "topic": topics.rule_topic(d["text"]),
              "judge": identity, "rubric_version": RUBRIC.version} for d in chosen if done[d["id"]]["scores"]]
  jsonl_log.write_atomic(p["annotations"], records)
  summary = {"documents": len(docs), "sample": len(chosen), "annotated": len(records),
             "unparsable": len(chosen) - len(records),
             "retried": sum(done[d["id"]]["attempts"] > 1 for d in chosen), "judge": identity,
             "rubric_version": RUBRIC.version,
             "mean": {k: sum(r[k] for r in records) / len(records) if records else None for k in SCORES},
             "histogram": {k: [sum(r[k] == v for r in records) for v in range(6)] for k in SCORES},
             "topics": {t: sum(r["topic"] == t for r in records) for t in topics.TOPICS}}
  atomic.write_json(p["summary"], summary)
  return summary

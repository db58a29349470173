"""Judge-guided DPO pairs (docs/RECIPE.md, "Post-training", DPO stage 2).

Responses: num_responses per prompt from each responder (our sampler on a workdir or HF folder,
or an OpenAI-compatible endpoint); an empty reply is a response (a bad one), judged like the rest.
A judge scores every response 1-5 on accuracy, style and detail with the rubric in
judge_rubric.txt, or, as `oracle`, by the rules of judge_rules.py: accuracy from the prompt's
oracle on the answer stated after `Final answer:`, style and detail only for readable text (not
gibberish), from its form and the true computations it shows, 1/1/1 for an empty reply. A verdict
that does not parse strictly (exactly the three `name: N` lines) is asked again up to
judge_retries times, then the response is dropped and counted. The pair of a prompt is its best
and worst response by (accuracy, mean of the three): the positive has the higher accuracy or, on
an accuracy tie, the higher mean. A pair needs two different responses (stripped texts) whose
scores parsed and differ; a prompt without one is logged and counted by reason (`no_pair`:
fewer_than_two_scored, tie, identical). Pairs are written in the DPO stage's conversation format
with the scores kept:

  {"messages", "chosen", "rejected", "chosen_scores", "rejected_scores", "rule", "prompt_id"}

The summary counts prompts, the pairs written (by rule), the prompts without a pair (by reason) and
the responses dropped.

  python -m phi4_jax.posttrain.judge --prompts=P.jsonl --out=PAIRS.jsonl \
      --responder=workdir:RUN/dpo_pts --responder=http://host:8000/v1,model=NAME --judge=oracle

Resumable like PTS: one line per prompt in OUT.log.jsonl, OUT rewritten from it at the end.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import zlib

import ml_collections

from phi4_jax import fields, flags
from phi4_jax.posttrain import rollouts
from phi4_jax.store import fingerprint, jsonl_log
from phi4_jax.posttrain.judge_rules import (NO_PAIR_REASONS, oracle_scores, parse_scores, pick_pair,
                                           rubric_messages)
from phi4_jax.posttrain.openai_http import Endpoint, EndpointError, map_concurrently
from phi4_jax.posttrain.questions import read_questions


FIELDS = fields.Group(
    num_responses=fields.Field(4, fields.integer(1), "responses per prompt from each responder"),
    temperature=fields.Field(0.8, fields.number(0), "responders' sampling temperature"),
    top_p=fields.Field(1.0, fields.number(0, 1, low_open=True),
                       "responders' nucleus (1 = the whole distribution)"),
    max_new_tokens=fields.Field(256, fields.integer(1), "tokens per response"),
    judge_retries=fields.Field(2, fields.integer(0),
                               "a verdict that does not parse is asked again this many times"),
    judge_max_tokens=fields.Field(32, fields.integer(8), "tokens per verdict"),
    concurrency=fields.Field(8, fields.integer(1), "HTTP requests in flight per endpoint"),
    prompts_per_round=fields.Field(16, fields.integer(1), "prompts answered and judged together"),
    max_batch=fields.Field(256, fields.integer(1), "rows decoded together by our sampler"),
    seed=fields.Field(0, fields.integer(0), "seeds our sampler's responses"),
)
RULES = FIELDS.rules


def judge_fields() -> ml_collections.ConfigDict:
  return FIELDS.config()


class SamplerPolicy:
  """Responds or judges with our sampler (a workdir or an HF folder)."""

  def __init__(self, name: str, cfg, params, settings):
    self.name, self.cfg, self.params, self.settings = name, cfg, params, settings

  @classmethod
  def load(cls, name: str, path: str, settings) -> "SamplerPolicy":
    from phi4_jax import inference
    cfg, params = inference.load(path)
    return cls(name, cfg, params, settings)

  def _generate(self, prompts, n, keys, temperature, max_new_tokens) -> list[str]:
    from phi4_jax import inference
    outs = inference.generate(self.params, self.cfg, prompts, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=self.settings.top_p, num_samples=n,
                              seed=self.settings.seed, stop_ids=rollouts.STOP_IDS,
                              max_batch=self.settings.max_batch, sample_ids=keys)
    return [rollouts.TOKENIZER.decode(rollouts.content(c)) for c in outs]

  def respond(self, records: list[dict], n: int) -> list[list[str | None]]:
    keys = rollouts.sample_keys([(f"{r['id']}\0{self.name}", 0) for r in records], n)
    texts = self._generate([rollouts.question_prompt(r) for r in records], n, keys,
                           self.settings.temperature, self.settings.max_new_tokens)
    return [texts[i * n:(i + 1) * n] for i in range(len(records))]

  def complete(self, conversations: list[list[dict]], ids: list[str], attempt: int) -> list[str | None]:
    """Greedy verdicts first; a retry samples (temperature 0.7) so that it can differ."""
    keys = rollouts.sample_keys([(f"{i}\0judge", attempt) for i in ids], 1)
    return self._generate([rollouts.question_prompt({"messages": m}) for m in conversations], 1, keys,
                          0.0 if attempt == 0 else 0.7, self.settings.judge_max_tokens)


class EndpointPolicy:
  """Responds or judges through an OpenAI-compatible endpoint."""

  def __init__(self, name: str, spec: str, settings):
    self.name, self.settings, self.endpoint = name, settings, Endpoint.parse(spec)

  def respond(self, records: list[dict], n: int) -> list[list[str | None]]:
    jobs = [(r, k) for r in records for k in range(n)]
    messages = lambda r: r.get("messages") or [{"role": "user", "content": r["question"]}]
    outs = map_concurrently(lambda job: self.endpoint.chat(messages(job[0]), temperature=self.settings.temperature,
                                                           max_tokens=self.settings.max_new_tokens),
                            jobs, self.settings.concurrency)
    outs = [o if isinstance(o, str) else _failure(o, self.name) for o in outs]
    return [outs[i * n:(i + 1) * n] for i in range(len(records))]

  def complete(self, conversations: list[list[dict]], ids: list[str], attempt: int) -> list[str | None]:
    outs = map_concurrently(lambda m: self.endpoint.chat(m, temperature=0.0 if attempt == 0 else 0.7,
                                                         max_tokens=self.settings.judge_max_tokens),
                            conversations, self.settings.concurrency)
    return [o if isinstance(o, str) else _failure(o, self.name) for o in outs]


def _failure(error: Exception, name: str) -> EndpointError:
  """A request that failed past its retries: not a response, and its prompt is not done."""
  return error if isinstance(error, EndpointError) else EndpointError(f"{name}: {type(error).__name__}: {error}")


def check_spec(spec: str) -> str | None:
  """A responder or judge spec's model path (None for an endpoint, whose options are parsed
  here); ValueError naming the spec otherwise. No model is loaded."""
  if spec.startswith(("http://", "https://")):
    Endpoint.parse(spec)
    return None
  kind, sep, path = spec.partition(":")
  if not sep or kind not in ("workdir", "hf") or not path:
    raise ValueError(f"{spec!r}: expected workdir:PATH, hf:PATH or http(s)://URL,model=NAME")
  return os.path.expanduser(path)


def policy(spec: str, settings, name: str | None = None):
  """`workdir:PATH`, `hf:PATH` (our sampler) or `http(s)://...,model=NAME` (an endpoint)."""
  path = check_spec(spec)
  if path is None:
    return EndpointPolicy(name or spec.split(",")[0], spec, settings)
  return SamplerPolicy.load(name or spec, path, settings)


def score(judge, items: list[tuple[dict, str]], retries: int) -> list:
  """Scores of (record, response) items; None for a verdict that never parsed, the EndpointError of
  a request that failed (not asked again here: the client retried it)."""
  if judge == "oracle":
    return [oracle_scores(r, text) for r, text in items]
  scores: list[dict | None] = [None] * len(items)
  pending = list(range(len(items)))
  for attempt in range(retries + 1):
    verdicts = judge.complete([rubric_messages(*items[i]) for i in pending],
                              [f"{items[i][0]['id']}\0{zlib.crc32(items[i][1].encode())}" for i in pending],
                              attempt)
    for i, verdict in zip(pending, verdicts):
      scores[i] = parse_scores(verdict) if isinstance(verdict, str) else verdict
    pending = [i for i in pending if scores[i] is None]
    if not pending:
      break
  return scores


def judge_round(responders: list, judge, records: list[dict], settings) -> tuple[list[dict], list[str]]:
  """(one log line per prompt: its scored responses, how many were dropped, its pair or None and
  why none (`no_pair`); the failures of the prompts left out because a request for them failed)."""
  answers = [p.respond(records, settings.num_responses) for p in responders]
  per_prompt = [[(p.name, text) for p, texts in zip(responders, answers) for text in texts[i]]
                for i in range(len(records))]
  items = [(r, text) for r, responses in zip(records, per_prompt) for _, text in responses if isinstance(text, str)]
  scores = iter(score(judge, items, settings.judge_retries))
  lines, failures = [], []
  for r, responses in zip(records, per_prompt):
    scored = [{"policy": name, "text": text, "scores": next(scores) if isinstance(text, str) else None}
              for name, text in responses]
    failed = [x for s in scored for x in (s["text"], s["scores"]) if isinstance(x, EndpointError)]
    if failed:
      failures.append(f"{r['id']}: {failed[0]}")
      continue
    pair = pick_pair([(s["text"], s["scores"]) for s in scored])
    record = None
    if not isinstance(pair, str):
      chosen, rejected = scored[pair[0]], scored[pair[1]]
      record = {"messages": r.get("messages") or [{"role": "user", "content": r["question"]}],
                "chosen": chosen["text"], "rejected": rejected["text"], "chosen_scores": chosen["scores"],
                "rejected_scores": rejected["scores"], "rule": pair[2], "prompt_id": r["id"]}
    lines.append({"prompt_id": r["id"], "responses": scored,
                  "dropped": sum(s["scores"] is None for s in scored), "pair": record,
                  "no_pair": pair if isinstance(pair, str) else None})
  return lines, failures


def no_pair_reason(line: dict) -> str | None:
  """Why a logged prompt has no pair (None when it has one); a line logged before `no_pair` was
  kept gets it from its scored responses."""
  if line["pair"]:
    return None
  if line.get("no_pair"):
    return line["no_pair"]
  found = pick_pair([(s["text"], s["scores"]) for s in line["responses"] if isinstance(s["text"], str)])
  return found if isinstance(found, str) else "tie"


def spec_identity(spec: str) -> dict:
  """What a responder or judge spec names, for a fingerprint: an endpoint by its spec, a model by
  store.fingerprint.model_identity (its step: a workdir that trained on is another model)."""
  kind, sep, path = spec.partition(":")
  if spec.startswith(("http://", "https://")) or kind not in ("workdir", "hf") or not path:
    return {"spec": spec.split(",api_key")[0]}
  return {"spec": spec, **fingerprint.model_identity(os.path.expanduser(path))}


def claim(out: str, responders: list[dict], judge: dict, prompts: list[dict], settings,
          overwrite: bool = False, flag: str = "--overwrite") -> None:
  """OUT's fingerprint (store/fingerprint.py): other responders, judge, prompts or settings
  (concurrency and batching aside) are refused."""
  made = fingerprint.settings_identity(settings, ("concurrency", "max_batch"))
  fingerprint.claim(out, {"responders": responders, "judge": judge, "settings": made,
                          "prompts": fingerprint.records_identity(prompts)},
                    [out + ".log.jsonl", out], overwrite, flag)


def run(responders: list, judge, prompts: list[dict], out: str, settings, progress=sys.stderr) -> dict:
  """Answers, judges and pairs every prompt not yet in OUT.log.jsonl (claim it first); writes OUT.
  Returns counts. A prompt whose request failed past its retries is not logged: after the rest,
  EndpointError names the failures, and a rerun asks for those prompts again."""
  FIELDS.check(settings, "judge")
  log = out + ".log.jsonl"
  done = jsonl_log.read(log, "prompt_id")
  todo, failures = [p for p in prompts if p["id"] not in done], []
  for begin in range(0, len(todo), settings.prompts_per_round):
    lines, failed = judge_round(responders, judge, todo[begin:begin + settings.prompts_per_round], settings)
    jsonl_log.append(log, lines)
    done.update((line["prompt_id"], line) for line in lines)
    failures += failed
    if progress:
      print(f"judge: {len(done)}/{len(prompts)} prompts", file=progress)
  if failures:
    raise EndpointError(f"judge: {len(failures)} of {len(prompts)} prompts failed and are not done "
                        f"(first: {failures[0]}); rerun to ask for them again")
  logged = [done[p["id"]] for p in prompts]
  written = [line["pair"] for line in logged if line["pair"]]
  jsonl_log.write_atomic(out, written)
  rules = collections.Counter(pair["rule"] for pair in written)
  missing = collections.Counter(no_pair_reason(line) for line in logged if not line["pair"])
  return {"prompts": len(prompts), "pairs": len(written), "accuracy_pairs": rules["accuracy"],
          "overall_pairs": rules["overall"],
          "prompts_without_pair": {reason: missing[reason] for reason in NO_PAIR_REASONS},
          "dropped_responses": sum(line["dropped"] for line in logged)}


def main(argv=None) -> None:
  p = flags.Parser("python -m phi4_jax.posttrain.judge", __doc__)
  p.add_argument("--prompts", required=True, help="JSONL of prompts (question or messages; answer optional)")
  p.add_argument("--out", required=True, help="JSONL of pairs (the DPO stage's conversation format)")
  p.add_argument("--responder", action="append", required=True,
                 help="workdir:PATH, hf:PATH or http(s)://URL,model=NAME (repeatable)")
  p.add_argument("--judge", default="oracle", help="oracle (rule-based), workdir:PATH, hf:PATH or an endpoint")
  flags.add_overwrite_flag(p)
  flags.add_settings_flags(p, FIELDS, group="settings")  # (a recipe's config.<stage>.settings)
  args = p.parse_args(argv)
  settings = flags.settings(args, FIELDS)
  for spec in [*args.responder, *([args.judge] if args.judge != "oracle" else [])]:
    check_spec(spec)  # (every spec, before the first model loads)
  prompts = read_questions(args.prompts, need_answer=False)
  fingerprint.refuse_input_as_output(args.out, {"--prompts": args.prompts})
  claim(args.out, [spec_identity(s) for s in args.responder], spec_identity(args.judge), prompts, settings,
        args.overwrite)
  responders = [policy(spec, settings) for spec in args.responder]
  judge = "oracle" if args.judge == "oracle" else policy(args.judge, settings, name="judge")
  print(json.dumps(run(responders, judge, prompts, args.out, settings)))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError, EndpointError) as e:
    sys.exit(f"error: {e}")

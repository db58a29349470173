"""Refusal data against hallucination (the Phi-4 report's appendix A.1): SFT conversations and DPO pairs.

Each question (an oracles.py record: `question` or `messages`, with its `answer` or `tests`) is
answered num_samples times by the model; the oracle checks every answer and p_correct = right
answers / num_samples estimates the model's accuracy on it. Each question also gets a refusal and
bogus_per_question bogus variants (questions about something that does not exist), each with its
own refusal. They come from the teacher (--teacher: a judge.policy spec, asked with the prompts of
refusal_prompt.txt; a bogus variant rates itself 1-5 and one under bogus_min_quality is dropped; a
reply that does not parse is asked again teacher_retries times, then a refusal falls back to the
templates and a bogus variant is dropped, both counted) or, without a teacher, from the templates:

  refusal        REFUSALS[h % 4], h = crc32 of (seed, question id)
  bogus k        "What is the <E> of the answer to this question? <question>", E an invented
                 quantity: ENTITIES[h % 6], h = crc32 of (seed, question id, k); its refusal is
                 BOGUS_REFUSALS[h' % 2] naming E (h' = crc32 of (seed, question id, k, "refusal"))

From them (`first right` / `first wrong`: the first sampled answer the oracle accepts / rejects):

  DIR/sft.jsonl    conversations {"messages", "rule", "question_id", "p_correct"}, in question order:
                   "answer"   the question and its first right answer, where p_correct >= usually_right
                   "refusal"  the question and its refusal, where p_correct <= usually_wrong
                   "bogus"    each bogus question and its refusal, always (also "bogus_id")
  DIR/pairs.jsonl  DPO pairs, each side cut to its first pair_tokens tokens (the paper's DPO sees
                   only the start of a response):
                   "correct_over_refusal"  first right > refusal, where p_correct > 0
                   "refusal_over_wrong"    refusal > first wrong, where p_correct < 1
                   {"prompt_ids", "chosen_ids", "rejected_ids", "messages", "chosen", "rejected",
                   "rule", "question_id", "p_correct"}: DPO trains on the ids (data/pairs.py's token-id
                   form: the conversation form would end each cut side with <|im_end|>); messages and
                   the cut sides' text are for reading. A response of fewer tokens keeps the
                   <|im_end|> that ended it (an empty one is <|im_end|> alone). A pair whose cut sides
                   are the same tokens is dropped and counted.
  DIR/summary.json counts: questions, the p_correct histogram, SFT records and pairs by rule, pairs
                   dropped, bogus questions made and dropped, refusals by teacher and by template

  python -m phi4_jax.posttrain.refusal --workdir=MODEL --questions=Q.jsonl --out=DIR \
      [--settings.num_samples=8] [--teacher=http://host:8000/v1,model=NAME]

Resumable: one line per question in DIR/log.jsonl (its samples, verdicts, refusal and bogus
variants), written as each round of questions finishes; the outputs are rewritten from it at the end.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import zlib
from importlib import resources

import ml_collections

from phi4_jax import fields, flags
from phi4_jax.posttrain import judge, rollouts
from phi4_jax.posttrain.openai_http import EndpointError
from phi4_jax.posttrain.questions import read_questions
from phi4_jax.store import atomic, fingerprint, jsonl_log

FIELDS = fields.Group(
    num_samples=fields.Field(8, fields.integer(1), "answers sampled per question to estimate p_correct"),
    temperature=fields.Field(0.8, fields.number(0), "the model's sampling temperature"),
    top_p=fields.Field(1.0, fields.number(0, 1, low_open=True),
                       "the model's nucleus (1 = the whole distribution)"),
    max_new_tokens=fields.Field(256, fields.integer(1), "tokens per sampled answer"),
    usually_right=fields.Field(0.75, fields.number(0, 1),
                               "SFT on the first right answer where p_correct >= this"),
    usually_wrong=fields.Field(0.25, fields.number(0, 1), "SFT on the refusal where p_correct <= this"),
    pair_tokens=fields.Field(5, fields.integer(1),
                             "each side of a DPO pair is cut to its first this many tokens"),
    bogus_per_question=fields.Field(1, fields.integer(0), "bogus variants (each with a refusal) per question"),
    bogus_min_quality=fields.Field(3, fields.integer(1, 5),
                                   "a teacher's bogus variant rated under this is dropped"),
    teacher_max_tokens=fields.Field(256, fields.integer(8), "tokens per teacher reply"),
    teacher_retries=fields.Field(2, fields.integer(0),
                                 "a teacher reply that does not parse is asked again this many times"),
    concurrency=fields.Field(8, fields.integer(1), "HTTP requests in flight to a teacher endpoint"),
    questions_per_round=fields.Field(16, fields.integer(1), "questions sampled (and logged) together"),
    max_batch=fields.Field(256, fields.integer(1), "rows decoded together by our sampler"),
    seed=fields.Field(0, fields.integer(0), "seeds the samples and the template choices"),
)
BATCHING = ("concurrency", "questions_per_round", "max_batch")  # settings the outputs do not depend on
LOG, SFT, PAIRS, SUMMARY = "log.jsonl", "sft.jsonl", "pairs.jsonl", "summary.json"
SFT_RULES = ("answer", "refusal", "bogus")
PAIR_RULES = ("correct_over_refusal", "refusal_over_wrong")

REFUSALS = (
    "I'm not sure I can answer that correctly, so I'd rather not guess.",
    "I don't know the answer to that reliably, and I don't want to give you a wrong one.",
    "I'm not confident enough to answer that; I could easily get it wrong.",
    "Sorry, I can't answer that with confidence, so I won't guess.",
)
ENTITIES = ("Veltrane index", "Marquell residue", "Dorvish quotient", "Quorrick number", "Brindell ratio",
            "Tassering coefficient")
BOGUS_QUESTION = "What is the {entity} of the answer to this question? {question}"
BOGUS_REFUSALS = (
    "I don't know of anything called the {entity}, so I can't answer that without making something up.",
    "As far as I know, the {entity} is not an established concept, so I can't give you a reliable answer.",
)


def sections(text: str) -> dict[str, str]:
  """{name: prompt} of a prompt file: each prompt follows its `[name]` line (what comes before the
  first is a comment, never sent)."""
  parts = re.split(r"^\[(\w+)\]\n", text, flags=re.MULTILINE)
  return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


PROMPTS = sections(resources.files("phi4_jax.posttrain").joinpath("refusal_prompt.txt")
                    .read_text(encoding="utf-8"))  # {"refusal": ..., "bogus": ...}
_QUESTION = re.compile(r"question\s*:\s*(\S.*)", re.IGNORECASE)
_QUALITY = re.compile(r"quality\s*:\s*([1-5])", re.IGNORECASE)


def refusal_fields() -> ml_collections.ConfigDict:
  return FIELDS.config()


def check_settings(settings: ml_collections.ConfigDict, prefix: str = "refusal") -> None:
  """Every field in range, and usually_wrong < usually_right (else a question could be both)."""
  FIELDS.check(settings, prefix)
  if settings.usually_wrong >= settings.usually_right:
    raise ValueError(f"{prefix}.usually_wrong: must be < {prefix}.usually_right={settings.usually_right}, "
                     f"got {settings.usually_wrong}")


def _hash(*parts) -> int:
  return zlib.crc32("\0".join(map(str, parts)).encode("utf-8"))


def question_text(record: dict) -> str:
  """The question: its `question`, or the last user turn of its `messages`."""
  if record.get("question"):
    return record["question"]
  return [m["content"] for m in record["messages"] if m["role"] == "user"][-1]


def conversation(record: dict) -> list[dict]:
  return list(record.get("messages") or [{"role": "user", "content": record["question"]}])


def template_refusal(question_id: str, seed: int) -> str:
  return REFUSALS[_hash(seed, question_id) % len(REFUSALS)]


def template_bogus(question_id: str, k: int, question: str, seed: int) -> tuple[str, str]:
  """(bogus variant k of the question, its refusal): the module docstring's template."""
  entity = ENTITIES[_hash(seed, question_id, k) % len(ENTITIES)]
  refusal = BOGUS_REFUSALS[_hash(seed, question_id, k, "refusal") % len(BOGUS_REFUSALS)]
  return BOGUS_QUESTION.format(entity=entity, question=question), refusal.format(entity=entity)


def prompt_messages(kind: str, question: str) -> list[dict]:
  """The teacher's request for a refusal or a bogus variant of `question`."""
  return [{"role": "user", "content": PROMPTS[kind].replace("{question}", question)}]


def parse_refusal(reply: str) -> str | None:
  return reply.strip() or None


def parse_bogus(reply: str) -> tuple[str, int] | None:
  """(question, quality) of a reply of exactly a `Question: ...` line and a `Quality: N` line."""
  lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
  if len(lines) != 2:
    return None
  question, quality = _QUESTION.fullmatch(lines[0]), _QUALITY.fullmatch(lines[1])
  return (question.group(1).strip(), int(quality.group(1))) if question and quality else None


def teacher_settings(settings: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The settings a judge.policy completes with: its reply length is teacher_max_tokens."""
  return ml_collections.ConfigDict({**settings.to_dict(), "judge_max_tokens": settings.teacher_max_tokens})


def load_teacher(spec: str, settings: ml_collections.ConfigDict):
  """The teacher of a judge.policy spec (workdir:PATH, hf:PATH, http(s)://URL,model=NAME); None for ""."""
  return judge.policy(spec, teacher_settings(settings), name="teacher") if spec else None


def ask(teacher, kind: str, requests: list[tuple[str, str]], settings) -> list:
  """The teacher's parsed replies to (request id, question) requests for a refusal (its text) or a
  bogus variant ((question, quality)); None where no reply parsed in 1 + teacher_retries asks (the
  first greedy, the others sampled). A request that failed raises its EndpointError."""
  parse = {"refusal": parse_refusal, "bogus": parse_bogus}[kind]
  found: list = [None] * len(requests)
  pending = list(range(len(requests)))
  for attempt in range(settings.teacher_retries + 1):
    if not pending:
      break
    replies = teacher.complete([prompt_messages(kind, requests[i][1]) for i in pending],
                               [f"{requests[i][0]}\0{kind}" for i in pending], attempt)
    for i, reply in zip(pending, replies):
      if isinstance(reply, Exception):
        raise reply
      found[i] = parse(reply) if isinstance(reply, str) else None
    pending = [i for i in pending if found[i] is None]
  return found


def _refusals(teacher, requests: list[tuple[str, str]], settings) -> list[tuple[str, str]]:
  """(refusal, "teacher" | "template") per (request id, question)."""
  asked = ask(teacher, "refusal", requests, settings) if teacher else [None] * len(requests)
  return [(text, "teacher") if text else (template_refusal(rid, settings.seed), "template")
          for (rid, _), text in zip(requests, asked)]


def _bogus(teacher, records: list[dict], settings) -> list[list[dict]]:
  """Per record, its bogus variants {"id", "question", "quality", "refusal", "refusal_by"}."""
  wanted = [(r, f"{r['id']}/bogus-{k}", k) for r in records for k in range(settings.bogus_per_question)]
  if teacher is None:
    made = [(r, bid, *template_bogus(r["id"], k, question_text(r), settings.seed), None, "template")
            for r, bid, k in wanted]
  else:
    asked = ask(teacher, "bogus", [(bid, question_text(r)) for r, bid, _ in wanted], settings)
    kept = [(r, bid, *a) for (r, bid, _), a in zip(wanted, asked) if a and a[1] >= settings.bogus_min_quality]
    refusals = _refusals(teacher, [(bid, question) for _, bid, question, _ in kept], settings)
    made = [(r, bid, question, refusal, quality, by)
            for (r, bid, question, quality), (refusal, by) in zip(kept, refusals)]
  variants = collections.defaultdict(list)
  for r, bid, question, refusal, quality, by in made:
    variants[r["id"]].append({"id": bid, "question": question, "quality": quality, "refusal": refusal,
                              "refusal_by": by})
  return [variants[r["id"]] for r in records]


def sample_round(model, teacher, records: list[dict], settings) -> list[dict]:
  """One log line per question: {"question_id", "p_correct", "samples", "right", "refusal",
  "refusal_by", "bogus", "bogus_dropped"}. `model` answers with respond(records, n) (judge.py's
  policies); its answers to a question depend on the seed and the question's id alone."""
  n = settings.num_samples
  answers = model.respond(records, n)
  failed = [a for texts in answers for a in texts if not isinstance(a, str)]
  if failed:
    raise failed[0] if isinstance(failed[0], Exception) else EndpointError(f"no answer: {failed[0]!r}")
  right = rollouts.check_all([(r, text) for r, texts in zip(records, answers) for text in texts])
  refusals = _refusals(teacher, [(r["id"], question_text(r)) for r in records], settings)
  bogus = _bogus(teacher, records, settings)
  lines = []
  for i, r in enumerate(records):
    verdicts = [bool(v) for v in right[i * n:(i + 1) * n]]
    lines.append({"question_id": r["id"], "p_correct": p_correct(verdicts), "samples": list(answers[i]),
                  "right": verdicts, "refusal": refusals[i][0], "refusal_by": refusals[i][1],
                  "bogus": bogus[i], "bogus_dropped": settings.bogus_per_question - len(bogus[i])})
  return lines


def p_correct(right: list[bool]) -> float:
  """The estimated accuracy: the share of the sampled answers that are right."""
  return sum(right) / len(right)


def first(line: dict, right: bool) -> str | None:
  """The first sampled answer that is right (right=True) or wrong; None when there is none."""
  return next((text for text, ok in zip(line["samples"], line["right"]) if ok == right), None)


def cut(text: str, tokens: int) -> list[int]:
  """The first `tokens` token ids of the response `text` (plain text, encode_ordinary) followed by
  the <|im_end|> that ends it."""
  return (rollouts.TOKENIZER.encode_ordinary(text) + [rollouts.TOKENIZER.im_end_id])[:tokens]


def sft_records(record: dict, line: dict, settings) -> list[dict]:
  """The question's SFT conversations by the rules of the module docstring."""
  p, keep = line["p_correct"], {"question_id": line["question_id"], "p_correct": line["p_correct"]}
  reply = lambda text: {"role": "assistant", "content": text}
  out = []
  if p >= settings.usually_right:
    out.append({"messages": conversation(record) + [reply(first(line, True))], "rule": "answer", **keep})
  elif p <= settings.usually_wrong:
    out.append({"messages": conversation(record) + [reply(line["refusal"])], "rule": "refusal", **keep})
  for b in line["bogus"]:
    out.append({"messages": [{"role": "user", "content": b["question"]}, reply(b["refusal"])], "rule": "bogus",
                **keep, "bogus_id": b["id"]})
  return out


def pair_records(record: dict, line: dict, settings) -> tuple[list[dict], collections.Counter]:
  """The question's DPO pairs by the rules of the module docstring, each side cut to pair_tokens
  tokens; and the pairs dropped, by reason ("same_after_cut")."""
  p = line["p_correct"]
  sides = ([("correct_over_refusal", first(line, True), line["refusal"])] if p > 0 else []) + \
          ([("refusal_over_wrong", line["refusal"], first(line, False))] if p < 1 else [])
  pairs, dropped = [], collections.Counter()
  for rule, chosen, rejected in sides:
    chosen_ids, rejected_ids = cut(chosen, settings.pair_tokens), cut(rejected, settings.pair_tokens)
    if chosen_ids == rejected_ids:
      dropped["same_after_cut"] += 1
      continue
    decode = rollouts.TOKENIZER.decode
    pairs.append({"prompt_ids": rollouts.question_prompt(record), "chosen_ids": chosen_ids,
                  "rejected_ids": rejected_ids, "messages": conversation(record), "chosen": decode(chosen_ids),
                  "rejected": decode(rejected_ids), "rule": rule, "question_id": line["question_id"],
                  "p_correct": p})
  return pairs, dropped


def summarize(lines: list[dict], sft: list[dict], pairs: list[dict], dropped: collections.Counter,
              settings) -> dict:
  n = settings.num_samples
  right = collections.Counter(sum(line["right"]) for line in lines)
  count = lambda records, rules: {rule: sum(r["rule"] == rule for r in records) for rule in rules}
  refusals = collections.Counter([line["refusal_by"] for line in lines] +
                                 [b["refusal_by"] for line in lines for b in line["bogus"]])
  return {"questions": len(lines), "samples_per_question": n,
          "p_correct_histogram": {f"{k}/{n}": right[k] for k in range(n + 1)},
          "sft_records": len(sft), "sft_by_rule": count(sft, SFT_RULES),
          "pairs": len(pairs), "pairs_by_rule": count(pairs, PAIR_RULES),
          "pairs_dropped": {"same_after_cut": dropped["same_after_cut"]},
          "bogus_questions": sum(len(line["bogus"]) for line in lines),
          "bogus_dropped": sum(line["bogus_dropped"] for line in lines),
          "refusals_by": {"teacher": refusals["teacher"], "template": refusals["template"]}}


def claim(out: str, model: dict, teacher: dict | None, questions: list[dict], settings,
          overwrite: bool = False, flag: str = "--overwrite") -> None:
  """DIR's fingerprint (store/fingerprint.py, DIR/fingerprint.json): a rerun with another model,
  teacher, questions or settings (batching aside) is refused, or with overwrite starts over."""
  made = fingerprint.settings_identity(settings, BATCHING)
  fingerprint.claim(out, {"model": model, "teacher": teacher or "templates", "settings": made,
                          "questions": fingerprint.records_identity(questions)},
                    [os.path.join(out, name) for name in (LOG, SFT, PAIRS, SUMMARY)], overwrite, flag,
                    folder=True)


def run(model, teacher, questions: list[dict], out: str, settings, progress=sys.stderr) -> dict:
  """Samples and logs every question not yet in DIR/log.jsonl (claim DIR first), then writes
  DIR/sft.jsonl and DIR/pairs.jsonl from the log; returns the counts (summarize). A teacher request
  that failed past its retries raises its EndpointError: that round is not logged, a rerun asks again."""
  check_settings(settings)
  os.makedirs(out, exist_ok=True)
  log = os.path.join(out, LOG)
  done = jsonl_log.read(log, "question_id")
  todo = [q for q in questions if q["id"] not in done]
  for begin in range(0, len(todo), settings.questions_per_round):
    lines = sample_round(model, teacher, todo[begin:begin + settings.questions_per_round], settings)
    jsonl_log.append(log, lines)
    done.update((line["question_id"], line) for line in lines)
    if progress:
      print(f"refusal: {len(done)}/{len(questions)} questions", file=progress)
  lines = [done[q["id"]] for q in questions]
  sft, pairs, dropped = [], [], collections.Counter()
  for record, line in zip(questions, lines):
    sft += sft_records(record, line, settings)
    made, lost = pair_records(record, line, settings)
    pairs += made
    dropped += lost
  jsonl_log.write_atomic(os.path.join(out, SFT), sft)
  jsonl_log.write_atomic(os.path.join(out, PAIRS), pairs)
  return summarize(lines, sft, pairs, dropped, settings)


def main(argv=None) -> None:
  p = flags.Parser("python -m phi4_jax.posttrain.refusal", __doc__)
  flags.add_model_flags(p)
  p.add_argument("--questions", required=True,
                 help="JSONL of questions with answers (see posttrain/oracles.py)")
  p.add_argument("--out", required=True, help="a folder: sft.jsonl, pairs.jsonl, summary.json (and log.jsonl)")
  p.add_argument("--teacher", default="", help='writes refusals and bogus questions: workdir:PATH, hf:PATH or '
                 'http(s)://URL,model=NAME; "" = the templates')
  flags.add_overwrite_flag(p)
  flags.add_settings_flags(p, FIELDS, group="settings")  # (a recipe's config.<stage>.settings)
  args = p.parse_args(argv)
  settings = flags.settings(args, FIELDS)
  check_settings(settings)
  if args.teacher:
    judge.check_spec(args.teacher)  # (before a model loads)
  questions = read_questions(args.questions)
  fingerprint.refuse_input_as_output(args.out, {"--questions": args.questions})
  path = args.workdir or args.hf_dir
  claim(args.out, fingerprint.model_identity(path, args.step),
        judge.spec_identity(args.teacher) if args.teacher else None, questions, settings, args.overwrite)
  from phi4_jax import inference
  cfg, params = inference.load(path, args.step)
  summary = run(judge.SamplerPolicy("policy", cfg, params, settings), load_teacher(args.teacher, settings),
                questions, args.out, settings)
  atomic.write_json(os.path.join(args.out, SUMMARY), summary)
  print(json.dumps(summary))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError, EndpointError) as e:
    sys.exit(f"error: {e}")

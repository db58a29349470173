"""The engine that runs one synthetic dataset type: rounds of items through the generator, checks
cheapest first, a token budget, provenance, and a log that makes a kill resumable.

A round takes the next items_per_round work items (synth/protocol.py) in seed order; every item's
`make` runs together, each step's asks across all items going to the generator as one call. The
sampling key of an ask is (seed, type, item id, step, ask): the output does not depend on batch
sizes or process count. Each made item is logged (DIR/log/<type>.made.jsonl; with several processes,
each makes its share of the round and logs its own part), then its candidates are admitted in item
order, each rejection counted by reason:

  item        the type's own verdicts (unparsable replies, a seed the seed filter skips, ...)
  too_short / too_long   fewer than min_tokens or more than max_tokens training tokens
  duplicate              the same normalised text (data/overlap.py's words) as an accepted record
  near_duplicate         word 5-gram Jaccard (protocol.jaccard) >= near_duplicate with an accepted record
  contaminated           data/overlap.py's verdict against --benchmarks (13-gram or 7-gram ratio;
                         partial ones too with drop_partial): nothing contaminated is written
  failed_tests / wrong_answer   the candidate's sandbox or oracle checks (protocol.py)
  extra_solution         an item's candidates past its `keep` (rejection_sampling's keep_per_question)
  low_score              a model-given score under score_gate (0 = off)

Admission lines (DIR/log/<type>.log.jsonl) record each item's verdicts; the type stops once the
accepted records' tokens reach target_tokens (0 = every seed). DIR/<type>.jsonl is rewritten from
the logs after each round, so a kill at any moment and the same command give byte-identical output.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
import sys

import ml_collections

from phi4_jax import distributed, fields
from phi4_jax.data import overlap
from phi4_jax.posttrain import oracles, rollouts
from phi4_jax.posttrain.openai_http import EndpointError
from phi4_jax.store import jsonl_log
from phi4_jax.synth import protocol
from phi4_jax.synth.generator import Ask, prompt_ids

ENGINE = fields.Group(
    overlap.SETTINGS,  # common_items, contaminated_ratio, partial_ratio, drop_partial (decontamination)
    target_tokens=fields.Field(0, fields.integer(0),
                               "stop once the accepted records hold this many tokens (0 = every seed)"),
    num_seeds=fields.Field(0, fields.integer(0), "seeds read (0 = all)"),
    temperature=fields.Field(0.7, fields.number(0), "the generator's sampling temperature"),
    top_p=fields.Field(1.0, fields.number(0, 1, low_open=True), "our sampler's nucleus (1 = all)"),
    max_new_tokens=fields.Field(512, fields.integer(1), "tokens per generator reply"),
    retries=fields.Field(2, fields.integer(0), "a reply that does not parse is asked again this many times"),
    min_tokens=fields.Field(8, fields.integer(0), "a record of fewer training tokens is rejected (too_short)"),
    max_tokens=fields.Field(4096, fields.integer(1), "a record of more training tokens is rejected (too_long)"),
    near_duplicate=fields.Field(0.8, fields.number(0, 1),
                                "word 5-gram Jaccard with an accepted record at or above this: near_duplicate"),
    score_gate=fields.Field(0, fields.integer(0), "reject a candidate with a model-given score under this (0 = off)"),
    seed_filter=fields.Field(False, fields.boolean(),
                             "score each seed's information, complexity and reasoning (appendix D.1.1) first"),
    seed_min_score=fields.Field(3, fields.integer(1, 5), "the seed filter skips a seed scored under this on any"),
    passage_words=fields.Field(300, fields.integer(16), "seed text is split into passages of about this many words"),
    items_per_round=fields.Field(64, fields.integer(1), "items made (and logged) together"),
    concurrency=fields.Field(8, fields.integer(1), "requests in flight to an endpoint"),
    max_batch=fields.Field(256, fields.integer(1), "rows our sampler decodes together"),
    seed=fields.Field(0, fields.integer(0), "part of every sampling key"),
)
LOGS = "log"  # DIR/log/: the resumable logs and the outputs' fingerprints
BATCHING = ("items_per_round", "concurrency", "max_batch")  # settings the output does not depend on
SEED_FILTER = ("information", "complexity", "reasoning")  # the seed filter's scores, 1-5 each


def settings_group(type_module) -> fields.Group:
  """A type's settings: the engine's, then its own."""
  return fields.Group(ENGINE, type_module.FIELDS)


def record_text(record: dict) -> str:
  """The text the checks read: `text`, or the turns of `messages` one per line."""
  if "messages" in record:
    return "\n".join(m["content"] for m in record["messages"])
  return record["text"]


def record_tokens(record: dict) -> int:
  """Tokens the mixture trains on: the text's, or the ChatML-rendered conversation's."""
  if "messages" in record:
    return len(rollouts.TOKENIZER.apply_chat_template(record["messages"], tokenize=True))
  return len(rollouts.TOKENIZER.encode_ordinary(record["text"]))


def _seed_filtered(type_module, item: dict, settings):
  """make() behind the seed filter: the seed's metadata scored first (protocol.parse_scores)."""
  prompts = protocol.load_prompts("seed_filter")
  ask = Ask(prompts.messages("score", seed=type_module.seed_text(item)), 0.0, 64)
  scores, _ = yield from protocol.ask_parsed(ask, lambda r: protocol.parse_scores(r, SEED_FILTER, 1, 5),
                                             settings.retries)
  if scores is None:
    return protocol.rejected("seed_filter_unparsable")
  if min(scores.values()) < settings.seed_min_score:
    return protocol.rejected("seed_filter", [{"seed_scores": scores}])
  outcome = yield from type_module.make(item, settings)
  outcome["trail"] = [{"seed_scores": scores}] + outcome.get("trail", [])
  return outcome


def drive(type_module, items: list[dict], generator, settings) -> list[dict]:
  """Runs every item's make() together; one log line per item: {"item_id", "seed_id", "outcome",
  "generator_tokens"}. A request that failed raises its EndpointError (nothing is returned)."""
  make = (lambda it: _seed_filtered(type_module, it, settings)) if settings.seed_filter else (
      lambda it: type_module.make(it, settings))
  runs = [make(item) for item in items]
  outcomes: list[dict | None] = [None] * len(items)
  spent, steps = [0] * len(items), [0] * len(items)
  asks: dict[int, list[Ask]] = {}
  for i, run in enumerate(runs):
    _advance(runs, i, None, asks, outcomes)
  while asks:
    flat = [(i, j, ask) for i, item_asks in asks.items() for j, ask in enumerate(item_asks)]
    keys = [f"{settings.seed}\0{type_module.NAME}\0{items[i]['id']}\0{steps[i]}\0{j}" for i, j, _ in flat]
    replies = generator.chat([ask for _, _, ask in flat], keys)
    failed = [r for r in replies if not isinstance(r, str)]
    if failed:
      raise failed[0] if isinstance(failed[0], EndpointError) else EndpointError(str(failed[0]))
    by_item = collections.defaultdict(list)
    for (i, _, ask), reply in zip(flat, replies):
      by_item[i].append(reply)
      spent[i] += len(prompt_ids(ask.messages)) + len(rollouts.TOKENIZER.encode_ordinary(reply)) + 1
    asks = {}
    for i, item_replies in by_item.items():
      steps[i] += 1
      _advance(runs, i, item_replies, asks, outcomes)
  return [{"item_id": it["id"], "seed_id": it["seed_id"], "outcome": o, "generator_tokens": n}
          for it, o, n in zip(items, outcomes, spent)]


def _advance(runs, i: int, replies, asks: dict, outcomes: list) -> None:
  try:
    step = runs[i].send(replies)
  except StopIteration as done:
    outcomes[i] = done.value
    return
  if not step:
    raise ValueError("a synth type yielded no asks")
  asks[i] = list(step)


class Admission:
  """The accepted records so far (for the duplicate checks) and the counts, in item order."""

  def __init__(self, index: overlap.Index | None, settings):
    self.index, self.settings = index, settings
    self.decontam = overlap.Settings(settings.common_items, settings.contaminated_ratio, settings.partial_ratio,
                                     settings.drop_partial)
    self.hashes: set[str] = set()
    self.shingles: list[set] = []
    self.by_shingle: dict[int, list[int]] = collections.defaultdict(list)
    self.tokens = 0

  def cheap(self, record: dict) -> tuple[str | None, int]:
    """(the first cheap check it fails or None, its tokens): format and length, duplicates, decontamination."""
    tokens = record_tokens(record)
    text = record_text(record)
    if not text.strip() or tokens < self.settings.min_tokens:
      return "too_short", tokens
    if tokens > self.settings.max_tokens:
      return "too_long", tokens
    words = overlap.words(text)
    if hashlib.sha1(" ".join(words).encode()).hexdigest() in self.hashes:
      return "duplicate", tokens
    if self.settings.near_duplicate < 1 and self._near(protocol.shingles(words)):
      return "near_duplicate", tokens
    if self.index is not None:
      verdict = self.index.verdict(text, self.decontam)
      if verdict and (verdict["verdict"] == "contaminated" or self.decontam.drop_partial):
        return "contaminated", tokens
    return None, tokens

  def _near(self, grams: set) -> bool:
    shared = collections.Counter(k for g in grams for k in self.by_shingle.get(g, ()))
    return any(n / (len(grams) + len(self.shingles[k]) - n) >= self.settings.near_duplicate
               for k, n in shared.items())

  def accept(self, record: dict, tokens: int) -> None:
    words = overlap.words(record_text(record))
    self.hashes.add(hashlib.sha1(" ".join(words).encode()).hexdigest())
    grams = protocol.shingles(words)
    for g in grams:
      self.by_shingle[g].append(len(self.shingles))
    self.shingles.append(grams)
    self.tokens += tokens

  def full(self) -> bool:
    return bool(self.settings.target_tokens) and self.tokens >= self.settings.target_tokens


def run_check(check: dict) -> str | None:
  """None when the check passes, else its rejection reason."""
  if check["check"] == "python_tests":
    return None if oracles.check_python(check["tests"], check["program"]).passed else "failed_tests"
  if check["check"] == "oracle":
    return None if oracles.check(check["question"], check["completion"]) else "wrong_answer"
  raise ValueError(f"unknown check {check['check']!r}")


def admit(made: list[dict], admission: Admission, settings) -> list[dict]:
  """Admission lines for made items, in order, until the budget is full: {"item_id", "verdicts"
  (one per candidate: "accepted" or a reason), "tokens"} or {"item_id", "rejected": reason}. The
  slow checks of every candidate that passes the cheap ones run first, concurrently."""
  slow = [(i, k) for i, line in enumerate(made) for k, c in enumerate(line["outcome"].get("candidates", ()))
          if c["checks"]]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    found = dict(zip(slow, pool.map(lambda ik: _slow(made[ik[0]]["outcome"]["candidates"][ik[1]]), slow)))
  lines = []
  for i, line in enumerate(made):
    if admission.full():
      break
    outcome = line["outcome"]
    if "rejected" in outcome:
      lines.append({"item_id": line["item_id"], "rejected": outcome["rejected"]})
      continue
    verdicts, counts = [], []
    for k, c in enumerate(outcome["candidates"]):
      if outcome.get("keep") and verdicts.count("accepted") >= outcome["keep"]:
        verdicts.append("extra_solution")
        counts.append(0)
        continue
      reason, tokens = admission.cheap(c["record"])
      if reason is None and not admission.full():
        reason = found.get((i, k)) or _score_gate(c, settings)
      elif reason is None:
        reason = "over_budget"
      if reason is None:
        admission.accept(c["record"], tokens)
      verdicts.append(reason or "accepted")
      counts.append(tokens)
    lines.append({"item_id": line["item_id"], "verdicts": verdicts, "tokens": counts})
  return lines


def _slow(c: dict) -> str | None:
  return next((r for r in map(run_check, c["checks"]) if r), None)


def _score_gate(c: dict, settings) -> str | None:
  if settings.score_gate and c["scores"] and min(c["scores"].values()) < settings.score_gate:
    return "low_score"
  return None


def replay(lines: list[dict], made: dict[str, dict], admission: Admission) -> None:
  """Rebuilds the admission state from logged lines (a resumed run)."""
  for line in lines:
    for c, verdict, tokens in zip(made[line["item_id"]]["outcome"].get("candidates", ()),
                                  line.get("verdicts", ()), line.get("tokens", ())):
      if verdict == "accepted":
        admission.accept(c["record"], tokens)


def paths(out: str, name: str) -> dict[str, str]:
  """DIR/<type>.jsonl, and its logs in DIR/log/: made items (one part per process) and admissions."""
  return {"records": os.path.join(out, f"{name}.jsonl"), "made": os.path.join(out, LOGS, f"{name}.made.jsonl"),
          "log": os.path.join(out, LOGS, f"{name}.log.jsonl")}


def log_progress(name: str, admission: Admission, done: int, total: int, progress) -> None:
  if progress:
    target = admission.settings.target_tokens
    print(f"synth {name}: {done}/{total} items, {admission.tokens}"
          f"{f'/{target}' if target else ''} tokens accepted", file=progress)


def _read_made(path: str, process_count: int) -> dict[str, dict]:
  """Every process's made items, by item id (another process's part may be mid-append: not repaired)."""
  made = {}
  for k in range(process_count):
    made.update(jsonl_log.read(jsonl_log.part_path(path, k, process_count), "item_id", repair=process_count == 1))
  return made


def as_text(record: dict) -> dict:
  """A chat record's `text` too (its turns' contents, a blank line apart), so that a pretraining
  source reads it as a document while an SFT (chat) source reads its `messages`."""
  if "messages" in record and "text" not in record:
    return {"text": "\n\n".join(m["content"] for m in record["messages"])}
  return {}


def output_records(type_module, lines: list[dict], made: dict[str, dict], identity: dict) -> list[dict]:
  """The accepted records (a chat record with its `text` too, as_text) with their provenance: id,
  seed id, type, prompt version, generator, the rounds that made them, model-given scores and the
  slow checks they passed."""
  out = []
  for line in lines:
    item = made[line["item_id"]]
    for k, (c, verdict) in enumerate(zip(item["outcome"].get("candidates", ()), line.get("verdicts", ()))):
      if verdict == "accepted":
        out.append({**c["record"], **as_text(c["record"]), "id": f"{line['item_id']}#{k}", "seed_id": item["seed_id"],
                    "type": type_module.NAME, "prompt_version": type_module.PROMPTS.version,
                    "generator": identity, "trail": item["outcome"].get("trail", []) + c["trail"],
                    "scores": c["scores"], "checks": [x["check"] for x in c["checks"]]})
  return out


def summarize(type_module, lines: list[dict], made: dict[str, dict], admission: Admission, identity: dict,
              total_items: int) -> dict:
  """The type's counts: seeds used, items, candidates generated, accepted, rejected by reason
  (duplicates and contaminated also apart), unique tokens and generator tokens spent."""
  rejected, generated, accepted, seeds, spent = collections.Counter(), 0, 0, set(), 0
  for line in lines:
    item = made[line["item_id"]]
    seeds.add(item["seed_id"])
    spent += item["generator_tokens"]
    if "rejected" in line:
      rejected[line["rejected"]] += 1
      continue
    generated += len(line["verdicts"])
    for verdict in line["verdicts"]:
      if verdict == "accepted":
        accepted += 1
      else:
        rejected[verdict] += 1
  return {"type": type_module.NAME, "source": type_module.SOURCE, "prompt_version": type_module.PROMPTS.version,
          "generator": identity, "seeds_used": len(seeds), "items": len(lines), "items_available": total_items,
          "generated": generated, "accepted": accepted, "rejected": dict(sorted(rejected.items())),
          "duplicates": rejected["duplicate"] + rejected["near_duplicate"], "contaminated": rejected["contaminated"],
          "unique_tokens": admission.tokens, "generator_tokens": spent,
          "target_tokens": admission.settings.target_tokens, "reached_target": admission.full()}


def work_items(type_module, seeds: list[dict], settings) -> list[dict]:
  items = [item for seed in seeds for item in type_module.items(seed, settings)]
  seen = collections.Counter(item["id"] for item in items)
  repeated = [k for k, n in seen.items() if n > 1]
  if repeated:
    raise ValueError(f"seeds: item id {repeated[0]!r} appears {seen[repeated[0]]} times (seed ids must be unique)")
  return items


def run(type_module, seeds: list[dict], generator, out: str, settings, index: overlap.Index | None = None,
        process_index: int = 0, process_count: int = 1, progress=sys.stderr) -> dict:
  """Makes DIR/<type>.jsonl from `seeds` (resuming from its logs); returns its summary. Each process
  makes its share of every round; process 0 admits the round and writes the records."""
  settings_group(type_module).check({k: v for k, v in settings.items() if k != "seeds"}, "config")
  items, p = work_items(type_module, seeds, settings), paths(out, type_module.NAME)
  os.makedirs(os.path.dirname(p["made"]), exist_ok=True)
  made_part = jsonl_log.part_path(p["made"], process_index, process_count)
  made = _read_made(p["made"], process_count)
  lines = list(jsonl_log.read(p["log"], "item_id", repair=process_index == 0).values())
  admission = Admission(index, settings)
  replay(lines, made, admission)
  if process_index == 0:
    jsonl_log.write_atomic(p["records"], output_records(type_module, lines, made, generator.identity))
  while len(lines) < len(items) and not admission.full():
    start = len(lines)
    batch = items[start:start + settings.items_per_round]
    mine = [it for k, it in enumerate(batch) if (start + k) % process_count == process_index and it["id"] not in made]
    if mine:
      jsonl_log.append(made_part, drive(type_module, mine, generator, settings))
    distributed.barrier(f"synth {type_module.NAME}: made {start}")
    made = _read_made(p["made"], process_count)
    if process_index == 0:
      new = admit([made[it["id"]] for it in batch], admission, settings)
      jsonl_log.append(p["log"], new)
      jsonl_log.append(p["records"], output_records(type_module, new, made, generator.identity))
    distributed.barrier(f"synth {type_module.NAME}: admitted {start}")
    if process_index:
      lines = list(jsonl_log.read(p["log"], "item_id", repair=False).values())
      admission = Admission(index, settings)
      replay(lines, made, admission)
    else:
      lines += new
    log_progress(type_module.NAME, admission, len(lines), len(items), progress)
    if len(lines) < start + len(batch):
      break  # the budget filled inside this round
  return summarize(type_module, lines, made, admission, generator.identity, len(items))

"""The synthetic data engine (phi4_jax/synth): every dataset type end to end against a scripted
loopback endpoint, decontamination, faithfulness and oracle checks, self-revision's stopping rule,
duplicates, the token budget, resume after a kill, batching independence, bad input, and our own
sampler on a tiny random model."""

import difflib
import json
import os
import zlib

import pytest

from phi4_jax import configs
from phi4_jax.data import planner
from phi4_jax.posttrain import rollouts
from phi4_jax.posttrain.openai_http import EndpointError
from phi4_jax.synth import types
from phi4_jax.synth.__main__ import main
from phi4_jax.synth.types import web_rewrite

TOKENIZER = rollouts.TOKENIZER
PLAN = "experiments/pretrain.py:phi4_14b"

# -- seeds and the scripted endpoint's replies ------------------------------------------------
DOCS = [{"id": "doc1", "text": "Photosynthesis converts light into chemical energy. Plants take in carbon "
                               "dioxide and water and release oxygen."},
        {"id": "doc2", "text": "A prime number has exactly two divisors. Every integer greater than one is a "
                               "product of primes in one way."}]
REWRITES = {"Photosynthesis": "Plants capture sunlight in their leaves and use its energy to build sugar "
                              "from carbon dioxide and water, giving off oxygen as they do so.",
            "prime number": "Primes are the building blocks of whole numbers: any whole number above one "
                            "splits into prime factors in exactly one way, apart from their order."}
QA = {"Photosynthesis": ("Why does a plant kept in the dark stop releasing oxygen?",
                         "Oxygen comes from splitting water, which light powers; without light no water is "
                         "split."),
      "prime number": ("Why can 12 not be written as two different products of primes?",
                       "Each factorisation into primes is unique, so 2 * 2 * 3 is the only one for 12.")}
TASKS = [{"id": "t1", "question": "Explain why the sky looks blue."},
         {"id": "t2", "question": "Explain why ice floats on water."}]
DRAFTS = {"sky": "Sunlight scatters off air molecules, and blue light scatters the most.",
          "ice": "Ice floats because it is cold."}
REVISION = "Revision {}: ice is less dense than water, its molecules held apart."
PASS = "reasoning: 9\nfactual_accuracy: 8\nclarity: 10\nClear and correct."
FAIL = "reasoning: 5\nfactual_accuracy: 7\nclarity: 6\nExplain the density."
CODE = [{"id": "c1", "code": "def add(a, b):\n    return a + b\n",
         "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"},
        {"id": "c2", "code": "def square(x):\n    return x * x\n", "tests": "assert square(3) == 9\n"},
        {"id": "c3", "code": "def neg(x):\n    # negate\n    return -x\n"},
        {"id": "c4", "code": "def mul(a, b):\n    return a * b\n"}]
INSTRUCTIONS = {"add": "Write add(a, b) returning the sum of a and b.",
                "square": "Write square(x) returning x times x.", "neg": "Write neg(x) returning minus x.",
                "mul": "Write mul(a, b) returning the product of a and b."}
REGENERATED = {"add": "def add(a, b):\n    return a + b", "square": "def square(x):\n    return x + x",
               "neg": "def neg(x):\n    return -x",
               "mul": "class Multiplier:\n    factor = 3\n\n    def apply(self, value):\n"
                      "        print(value)\n        return None"}
QUESTIONS = [{"id": "q1", "question": "What is 2 + 3?", "answer": "5"},
             {"id": "q2", "question": "What is 4 * 4?", "answer": "16"},
             {"id": "q3", "question": "What is 10 - 7?"},
             {"id": "q4", "question": "What is 9 - 9?"}]
# item -> its num_solutions=4 solutions, by ask index j (the j-th of the round's asks)
SOLUTIONS = {"q1": ["Two plus three makes five.\nFinal answer: 5", "I think it is six.\nFinal answer: 6",
                    "Counting on from two by three gives five.\nFinal answer: 5",
                    "Three more than two equals five.\nFinal answer: 5"],
             "q2": ["Four fours are sixteen.\nFinal answer: 16", "Four fours are sixteen.\nFinal answer: 16",
                    "Final answer: 12", "Final answer: 8"],
             "q3": ["Ten minus seven is three.\nFinal answer: 3", "Final answer: 4",
                    "Take seven away from ten: three are left.\nFinal answer: 3",
                    "Subtracting leaves three.\nFinal answer: 3"],
             "q4": ["Final answer: 1", "Nine take away nine leaves one.\nFinal answer: 1", "Final answer: 0",
                    "Final answer: 2"]}


def sample_key(type_name, item_id, j, step=0, seed=0):
  """The endpoint's `seed` of an ask, by hand: crc32 of the engine's key (seed, type, item, step,
  ask)."""
  return zlib.crc32(f"{seed}\0{type_name}\0{item_id}\0{step}\0{j}".encode()) & 0x7FFFFFFF


SOLUTION_BY_SEED = {sample_key("rejection_sampling", q, j): text for q, texts in SOLUTIONS.items()
                    for j, text in enumerate(texts)}


def _topic(p):
  return next((t for t in ("Photosynthesis", "prime number") if t in p), None)


def _turn(p):
  """multi_agent: the agent's turn k (k = the transcript's lines so far)."""
  name = p[len("You are "):].split(",", 1)[0]
  transcript = p.split("Conversation so far:\n", 1)[1]
  k = 0 if transcript.strip() == "(nothing yet)" else len(transcript.strip().splitlines())
  return f"The {name} makes point {k} about {_topic(p)}, step by step, with one worked example."


def reply(body):
  """The scripted endpoint: a reply for each prompt of every type, keyed on the prompt's text."""
  p = body["messages"][-1]["content"]
  if p.startswith(("Rewrite the passage below", "Turn the passage below")):
    return REWRITES[_topic(p)]
  if "find a chain of reasoning" in p:
    return "Question: {}\nAnswer: {}".format(*QA[_topic(p)])
  if "Rate the turn" in p:
    return "Score: 4"
  if "Write your next turn" in p:
    return _turn(p)
  if p.startswith("You are reviewing"):
    return PASS if "sky" in p else FAIL
  if p.startswith("Revise the response"):
    return REVISION.format(1 if DRAFTS["ice"] in p else 2)
  if p.startswith("Write the instruction"):
    return INSTRUCTIONS[next(n for n in INSTRUCTIONS if f"def {n}(" in p)]
  if p.endswith("Write the Python code in one fenced code block."):
    return "```python\n" + REGENERATED[next(n for n in INSTRUCTIONS if f"{n}(" in p)] + "\n```"
  if p.startswith("What is"):
    return SOLUTION_BY_SEED.get(body["seed"], "UNEXPECTED SEED")
  for task in TASKS:
    if p == task["question"]:
      return DRAFTS["sky" if "sky" in p else "ice"]
  return "UNEXPECTED PROMPT"


# -- helpers -----------------------------------------------------------------------------------
def spec(server, options=""):
  return f"http://127.0.0.1:{server.server_address[1]}/v1,model=fake{options}"


def identity(server):
  return {"endpoint": f"http://127.0.0.1:{server.server_address[1]}/v1", "model": "fake"}


def write_jsonl(path, records):
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


def synth(server, out, type_name, seeds, *flags, generator=None):
  """The CLI, in process; returns DIR/summary.json."""
  main([f"--type={type_name}", f"--seeds={seeds}", f"--generator={generator or spec(server)}",
        f"--out={out}", *flags])
  with open(os.path.join(out, "summary.json")) as f:
    return json.load(f)


def tokens(record):
  """Training tokens by hand: the text's, or the ChatML-rendered conversation's."""
  if "messages" in record:
    return len(TOKENIZER.apply_chat_template(record["messages"], tokenize=True))
  return len(TOKENIZER.encode_ordinary(record["text"]))


def spent(server):
  """Generator tokens of every request the server answered: prompt + reply + the stop token."""
  return sum(len(rollouts.question_prompt({"messages": body["messages"]}))
             + len(TOKENIZER.encode_ordinary(reply(body))) + 1 for body, _ in server.requests)


def provenance(server, type_name, item_id, body, trail, scores=None, checks=()):
  """An output record by hand: a chat record carries its turns as `text` too, a blank line apart."""
  if "messages" in body:
    body = {**body, "text": "\n\n".join(m["content"] for m in body["messages"])}
  return {**body, "id": f"{item_id}#0", "seed_id": item_id.split("/")[0], "type": type_name,
          "prompt_version": 1, "generator": identity(server), "trail": trail, "scores": scores or {},
          "checks": list(checks)}


def log_lines(out, type_name):
  return read_jsonl(os.path.join(out, "log", f"{type_name}.log.jsonl"))


def chat(user, assistant):
  return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


# -- 1. every type end to end ------------------------------------------------------------------
def _expected(server, name):
  """(seeds, flags, the records by hand, the summary's counts by hand) of each type's end-to-end
  run."""
  docs = (("doc1", "Photosynthesis"), ("doc2", "prime number"))
  if name == "web_rewrite":
    style = lambda item: [{"style": web_rewrite.STYLES[zlib.crc32(item.encode()) % 3]}]
    return DOCS, [], [provenance(server, name, f"{d}/p0", {"text": REWRITES[t]}, style(f"{d}/p0"))
                      for d, t in docs], {}
  if name == "qa_extraction":
    return DOCS, [], [provenance(server, name, f"{d}/p0", chat(*QA[t]), []) for d, t in docs], {}
  if name == "multi_agent":
    records = []
    for d, t in docs:
      turns = [{"agent": a, "content": f"The {a} makes point {k} about {t}, step by step, with one worked "
                                       "example.", "score": 4} for k, a in enumerate(("student", "teacher"))]
      records.append(provenance(server, name, f"{d}/p0", chat(turns[0]["content"], turns[1]["content"]),
                                turns, {"turn_min": 4}))
    return DOCS, ["--config.turns=2"], records, {}
  if name == "self_revision":
    sky = {"reasoning": 9, "factual_accuracy": 8, "clarity": 10}
    ice = {"reasoning": 5, "factual_accuracy": 7, "clarity": 6}
    revision = REVISION.format(1)
    return TASKS, ["--config.rounds=1"], [
        provenance(server, name, "t1", chat(TASKS[0]["question"], DRAFTS["sky"]),
                   [{"round": 0, "scores": sky, "critique": PASS}], sky),
        provenance(server, name, "t2", chat(TASKS[1]["question"], revision),
                   [{"round": 0, "scores": ice, "critique": FAIL, "revision": revision},
                    {"round": 1, "scores": ice, "critique": FAIL}], ice)], {}
  if name == "instruction_reversal":
    return [CODE[0], CODE[2]], [], [
        provenance(server, name, "c1", chat(INSTRUCTIONS["add"], CODE[0]["code"]),
                   [{"instruction": INSTRUCTIONS["add"], "regenerated": REGENERATED["add"]}],
                   checks=["python_tests"]),
        provenance(server, name, "c3", chat(INSTRUCTIONS["neg"], CODE[2]["code"]),
                   [{"instruction": INSTRUCTIONS["neg"], "regenerated": REGENERATED["neg"],
                     "similarity": 1.0}])], {}
  assert name == "rejection_sampling"
  # q1: solutions 0 (right) and 1 (six: wrong); q2: solution 0 right, its copy 1 dropped before the checks
  return QUESTIONS[:2], ["--config.num_solutions=2", "--config.keep_per_question=2"], [
      provenance(server, name, q["id"], chat(q["question"], SOLUTIONS[q["id"]][0]), [], checks=["oracle"])
      for q in QUESTIONS[:2]], {"generated": 3, "rejected": {"wrong_answer": 1}}


@pytest.mark.parametrize("name", list(types.TYPES))
def test_every_type_end_to_end_writes_its_records_with_provenance_and_counts(name, openai_server, tmp_path,
                                                                             capsys):
  openai_server.reply = reply
  seeds, flags, records, counts = _expected(openai_server, name)
  out = str(tmp_path / "out")
  summary = synth(openai_server, out, name, write_jsonl(tmp_path / "seeds.jsonl", seeds), *flags,
                  f"--plan={PLAN}")
  assert read_jsonl(os.path.join(out, f"{name}.jsonl")) == records  # (web_rewrite: `text`; else `messages`)
  s = summary["types"][name]
  unique = sum(tokens(r) for r in records)
  source = "web_rewrites" if name == "web_rewrite" else "synthetic"
  assert s == {"type": name, "source": source, "prompt_version": 1, "generator": identity(openai_server),
               "seeds_used": 2, "items": 2, "items_available": 2, "generated": counts.get("generated", 2),
               "accepted": 2, "rejected": counts.get("rejected", {}), "duplicates": 0, "contaminated": 0,
               "unique_tokens": unique, "generator_tokens": spent(openai_server), "target_tokens": 0,
               "reached_target": False}
  plan = configs.load(PLAN)
  fraction = {"web_rewrites": 0.15, "synthetic": 0.4}[source]
  planned = fraction * planner.budget(plan)
  assert summary["generator"] == identity(openai_server) and summary["plan"] == PLAN
  assert summary["sources"] == {source: {"unique_tokens": unique, "in_plan": True, "fraction": fraction,
                                         "planned_tokens": planned, "epochs": planned / unique}}
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
      name: {"accepted": 2, "unique_tokens": unique, "reached_target": False}}


def test_web_rewrite_sends_the_style_prompt_of_each_passage(openai_server, tmp_path):
  openai_server.reply = reply
  synth(openai_server, str(tmp_path / "out"), "web_rewrite", write_jsonl(tmp_path / "seeds.jsonl", DOCS))
  sent = sorted(body["messages"][-1]["content"] for body, _ in openai_server.requests)
  styles = [web_rewrite.STYLES[zlib.crc32(f"{d['id']}/p0".encode()) % 3] for d in DOCS]
  assert sent == sorted(web_rewrite.PROMPTS.sections[s].replace("{passage}", d["text"])
                        for s, d in zip(styles, DOCS))
  assert all(body["model"] == "fake" and body["temperature"] == 0.7 and body["max_tokens"] == 512
             for body, _ in openai_server.requests)


# -- 2. decontamination -----------------------------------------------------------------------
def test_a_generation_carrying_a_benchmark_13_gram_is_never_written(openai_server, tmp_path):
  openai_server.reply = reply
  shared = "any whole number above one splits into prime factors in exactly one way"  # (of doc2's rewrite)
  assert len(shared.split()) == 13 and shared in REWRITES["prime number"]
  bench = write_jsonl(tmp_path / "bench.jsonl",
                      [{"id": "b1", "question": f"Prove that {shared}, as Euclid knew."}])
  out = str(tmp_path / "out")
  summary = synth(openai_server, out, "web_rewrite", write_jsonl(tmp_path / "seeds.jsonl", DOCS),
                  f"--benchmarks={bench}")
  s = summary["types"]["web_rewrite"]
  assert (s["generated"], s["accepted"], s["contaminated"], s["rejected"]) == (2, 1, 1, {"contaminated": 1})
  assert [r["text"] for r in read_jsonl(os.path.join(out, "web_rewrite.jsonl"))] == [
      REWRITES["Photosynthesis"]]
  assert b"prime factors" not in read_bytes(os.path.join(out, "web_rewrite.jsonl"))
  assert [line["verdicts"] for line in log_lines(out, "web_rewrite")] == [["accepted"], ["contaminated"]]
  assert summary["benchmarks"] == bench and os.path.exists(os.path.join(out, "index.pkl"))
  # without the benchmark both are written (the other folder: its fingerprint differs)
  s = synth(openai_server, str(tmp_path / "clean"), "web_rewrite", str(tmp_path / "seeds.jsonl"))
  assert (s["types"]["web_rewrite"]["accepted"], s["types"]["web_rewrite"]["contaminated"]) == (2, 0)


# -- 3. instruction reversal's faithfulness ---------------------------------------------------
def test_instruction_reversal_keeps_only_faithful_regenerations(openai_server, tmp_path):
  openai_server.reply = reply
  out = str(tmp_path / "out")
  summary = synth(openai_server, out, "instruction_reversal", write_jsonl(tmp_path / "code.jsonl", CODE))
  s = summary["types"]["instruction_reversal"]
  # c1's regeneration passes its tests; c2's (x + x) fails square(3) == 9; c3 has no tests and its
  # regeneration is the seed without its comment; c4's regeneration is another program
  assert (s["items"], s["generated"], s["accepted"], s["rejected"]) == (
      4, 3, 2, {"failed_tests": 1, "unfaithful": 1})
  records = read_jsonl(os.path.join(out, "instruction_reversal.jsonl"))
  assert [(r["id"], r["messages"], r["checks"]) for r in records] == [
      ("c1#0", chat(INSTRUCTIONS["add"], CODE[0]["code"])["messages"], ["python_tests"]),
      ("c3#0", chat(INSTRUCTIONS["neg"], "def neg(x):\n    # negate\n    return -x\n")["messages"], [])]
  assert [line.get("verdicts", line.get("rejected")) for line in log_lines(out, "instruction_reversal")] == [
      ["accepted"], ["failed_tests"], ["accepted"], "unfaithful"]
  made = {m["item_id"]: m["outcome"]
          for m in read_jsonl(os.path.join(out, "log", "instruction_reversal.made.jsonl"))}
  # the similarity rule by hand: comments and blank lines removed, then difflib's ratio
  normalised = "class Multiplier:\n    factor = 3\n    def apply(self, value):\n        print(value)\n" \
               "        return None"
  ratio = difflib.SequenceMatcher(None, "def mul(a, b):\n    return a * b", normalised,
                                  autojunk=False).ratio()
  assert ratio < 0.6 and made["c4"]["trail"] == [
      {"instruction": INSTRUCTIONS["mul"], "regenerated": REGENERATED["mul"], "similarity": round(ratio, 4)}]
  # a laxer rule keeps c4 too
  s = synth(openai_server, str(tmp_path / "lax"), "instruction_reversal", str(tmp_path / "code.jsonl"),
            f"--config.min_similarity={ratio / 2}")["types"]["instruction_reversal"]
  assert (s["accepted"], s["rejected"]) == (3, {"failed_tests": 1})


# -- 4. self-revision's stopping rule ------------------------------------------------------------
def _requests_by_item(server):
  """{item: [draft, critique, revise] request counts}, read off the prompts the server got."""
  counts = {"sky": [0, 0, 0], "ice": [0, 0, 0]}
  for body, _ in server.requests:
    p = body["messages"][-1]["content"]
    item = "sky" if "sky" in p else "ice"
    counts[item][1 if p.startswith("You are reviewing") else 2 if p.startswith("Revise") else 0] += 1
  return counts


def test_self_revision_stops_at_min_score_or_after_its_rounds(openai_server, tmp_path):
  openai_server.reply = reply
  out = str(tmp_path / "out")
  summary = synth(openai_server, out, "self_revision", write_jsonl(tmp_path / "tasks.jsonl", TASKS),
                  "--config.rounds=2", "--config.min_score=8")
  # sky passes its first critique (all >= 8): 1 critique, no revision; ice never does (clarity 6):
  # rounds + 1 = 3 critiques and 2 revisions
  assert _requests_by_item(openai_server) == {"sky": [1, 1, 0], "ice": [1, 3, 2]}
  sky, ice = read_jsonl(os.path.join(out, "self_revision.jsonl"))
  low = {"reasoning": 5, "factual_accuracy": 7, "clarity": 6}
  revisions = [REVISION.format(k) for k in (1, 2)]
  assert sky["messages"][1]["content"] == DRAFTS["sky"]
  assert len(sky["trail"]) == 1 and "revision" not in sky["trail"][0]
  assert ice["messages"] == chat(TASKS[1]["question"], revisions[1])["messages"] and ice["scores"] == low
  assert ice["trail"] == [{"round": 0, "scores": low, "critique": FAIL, "revision": revisions[0]},
                          {"round": 1, "scores": low, "critique": FAIL, "revision": revisions[1]},
                          {"round": 2, "scores": low, "critique": FAIL}]
  assert summary["types"]["self_revision"]["accepted"] == 2
  # a score gate of 6 drops ice (its final reasoning score is 5), not sky (8 at least)
  s = synth(openai_server, str(tmp_path / "gated"), "self_revision", str(tmp_path / "tasks.jsonl"),
            "--config.score_gate=6")["types"]["self_revision"]
  assert (s["accepted"], s["rejected"]) == (1, {"low_score": 1})


# -- 5. duplicates ---------------------------------------------------------------------------
RIVER = ("Rivers carry water from high ground to the sea and shape the land they cross over many "
         "thousands of years")
DUPLICATES = {"e1": RIVER,
              "e2": "RIVERS carry water, from high-ground to the sea; and shape the land they cross over "
                    "many thousands of years!",
              "e3": RIVER[:-len("years")] + "centuries",
              "e4": "Glaciers grind valleys into a U shape as they slowly move downhill under their own "
                    "weight."}


def _by_seed(table):
  """A reply function: the reply of the seed whose `Seed <id>:` marker the prompt holds."""
  return lambda body: next(v for k, v in table.items() if f"Seed {k}:" in body["messages"][-1]["content"])


def test_identical_and_near_identical_generations_are_rejected(openai_server, tmp_path):
  seeds = [{"id": k, "text": f"Seed {k}: notes on landforms, erosion and how water moves soil."}
           for k in DUPLICATES]
  openai_server.reply = _by_seed(DUPLICATES)
  # e2 normalises to e1's words; e3 changes e1's last word: 16 word 5-grams each, 15 shared, Jaccard 15/17
  assert len(RIVER.split()) == 20 and 15 / 17 >= 0.8
  out = str(tmp_path / "out")
  s = synth(openai_server, out, "web_rewrite", write_jsonl(tmp_path / "seeds.jsonl", seeds))
  s = s["types"]["web_rewrite"]
  assert (s["generated"], s["accepted"], s["duplicates"], s["rejected"]) == (
      4, 2, 2, {"duplicate": 1, "near_duplicate": 1})
  assert [r["text"] for r in read_jsonl(os.path.join(out, "web_rewrite.jsonl"))] == [
      DUPLICATES["e1"], DUPLICATES["e4"]]
  assert [line["verdicts"] for line in log_lines(out, "web_rewrite")] == [
      ["accepted"], ["duplicate"], ["near_duplicate"], ["accepted"]]
  # at a threshold above 15/17 the near-identical one is kept
  s = synth(openai_server, str(tmp_path / "strict"), "web_rewrite", str(tmp_path / "seeds.jsonl"),
            "--config.near_duplicate=0.9")["types"]["web_rewrite"]
  assert (s["accepted"], s["rejected"]) == (3, {"duplicate": 1})


# -- 6. the token budget -----------------------------------------------------------------------
def test_a_type_stops_at_its_token_target(openai_server, tmp_path):
  texts = ["Fractions name parts of a whole, such as one half of a pizza shared by two friends.",
           "Decimals write tenths and hundredths after a point, so 0.25 means a quarter.",
           "Ratios compare two amounts, like three cups of flour for every cup of sugar in a recipe.",
           "Angles measure turning; a right angle is a quarter of a full turn around a point.",
           "Area counts the unit squares inside a shape, so a three by four rectangle holds twelve."]
  seeds = [{"id": f"s{k}", "text": f"Seed s{k}: a page of arithmetic notes."} for k in range(5)]
  openai_server.reply = _by_seed({f"s{k}": text for k, text in enumerate(texts)})
  t = [len(TOKENIZER.encode_ordinary(x)) for x in texts]
  target = t[0] + t[1] + 1  # reached by the third record
  out = str(tmp_path / "out")
  argv = (out, "web_rewrite", write_jsonl(tmp_path / "seeds.jsonl", seeds), f"--target_tokens={target}",
          "--config.items_per_round=2")
  s = synth(openai_server, *argv)["types"]["web_rewrite"]
  assert (s["items"], s["items_available"], s["accepted"], s["unique_tokens"], s["target_tokens"],
          s["reached_target"]) == (3, 5, 3, t[0] + t[1] + t[2], target, True)
  assert s["unique_tokens"] >= target
  # rounds of 2: items 1-2, then 3-4 (the target fills at 3: item 4 is made, never admitted); item 5
  # is never asked
  assert len(openai_server.requests) == 4 and len(log_lines(out, "web_rewrite")) == 3
  assert [r["text"] for r in read_jsonl(os.path.join(out, "web_rewrite.jsonl"))] == texts[:3]
  before = read_bytes(os.path.join(out, "web_rewrite.jsonl"))
  synth(openai_server, *argv)  # a rerun has nothing left to do
  assert len(openai_server.requests) == 4 and read_bytes(os.path.join(out, "web_rewrite.jsonl")) == before


# -- 7. rejection sampling -----------------------------------------------------------------------
REJECTION_FLAGS = ("--config.num_solutions=4", "--config.keep_per_question=2", "--config.plurality=true",
                   "--config.plurality_min_share=0.6")


def test_rejection_sampling_keeps_oracle_accepted_solutions_and_votes_without_an_answer(openai_server,
                                                                                         tmp_path):
  openai_server.reply = reply
  out = str(tmp_path / "out")
  s = synth(openai_server, out, "rejection_sampling", write_jsonl(tmp_path / "q.jsonl", QUESTIONS),
            *REJECTION_FLAGS)["types"]["rejection_sampling"]
  # q1: right, wrong (6), right, right past keep 2; q2: its two identical replies are one solution;
  # q3 has no answer: 3 of 4 say 3 (share 0.75 >= 0.6), then as q1; q4: 2 of 4 say 1 (0.5 < 0.6): no
  # plurality
  assert [line.get("verdicts", line.get("rejected")) for line in log_lines(out, "rejection_sampling")] == [
      ["accepted", "wrong_answer", "accepted", "extra_solution"],
      ["accepted", "wrong_answer", "wrong_answer"],
      ["accepted", "wrong_answer", "accepted", "extra_solution"], "no_plurality"]
  assert (s["items"], s["generated"], s["accepted"], s["rejected"]) == (
      4, 11, 5, {"extra_solution": 2, "no_plurality": 1, "wrong_answer": 4})
  assert s["accepted"] + sum(s["rejected"].values()) == s["generated"] + 1  # (q4, rejected as an item)
  records = read_jsonl(os.path.join(out, "rejection_sampling.jsonl"))
  assert [(r["id"], r["messages"][-1]["content"]) for r in records] == [
      ("q1#0", SOLUTIONS["q1"][0]), ("q1#2", SOLUTIONS["q1"][2]), ("q2#0", SOLUTIONS["q2"][0]),
      ("q3#0", SOLUTIONS["q3"][0]), ("q3#2", SOLUTIONS["q3"][2])]
  assert records[0]["messages"][0] == {"role": "user", "content": "What is 2 + 3?"}
  assert records[0]["checks"] == ["oracle"] and records[0]["trail"] == []
  assert records[3]["trail"] == [{"plurality": "3", "why": "kept"}]
  assert len(openai_server.requests) == 16
  assert {b["seed"] for b, _ in openai_server.requests} == set(SOLUTION_BY_SEED)


# -- 8. resume after a kill; batching -------------------------------------------------------------
def _cut_mid_line(path, keep_lines):
  """The file's first keep_lines lines and half of the next (a kill -9 mid-append)."""
  lines = read_bytes(path).splitlines(keepends=True)
  assert len(lines) > keep_lines
  with open(path, "wb") as f:
    f.write(b"".join(lines[:keep_lines]) + lines[keep_lines][:len(lines[keep_lines]) // 2])


def test_a_killed_run_resumes_to_the_same_bytes(openai_server, tmp_path):
  seeds = [{"id": f"k{k}", "text": f"Seed k{k}: a note about the number {k}."} for k in range(4)]
  openai_server.reply = _by_seed({f"k{k}": f"The number {k} is explained here with care, with two small "
                                            "examples and a picture." for k in range(4)})
  argv = (write_jsonl(tmp_path / "seeds.jsonl", seeds), "--config.items_per_round=1")
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  synth(openai_server, whole, "web_rewrite", *argv)
  synth(openai_server, killed, "web_rewrite", *argv)
  os.remove(os.path.join(killed, "web_rewrite.jsonl"))
  os.remove(os.path.join(killed, "summary.json"))
  _cut_mid_line(os.path.join(killed, "log", "web_rewrite.made.jsonl"), 2)
  _cut_mid_line(os.path.join(killed, "log", "web_rewrite.log.jsonl"), 1)
  openai_server.requests.clear()
  synth(openai_server, killed, "web_rewrite", *argv)
  # items 1-2 were made (item 2 not admitted): only items 3 and 4 are asked again
  asked = sorted(b["messages"][-1]["content"].split("Seed ")[1][:2] for b, _ in openai_server.requests)
  assert asked == ["k2", "k3"]
  for name in ("web_rewrite.jsonl", "summary.json", "log/web_rewrite.log.jsonl",
               "log/web_rewrite.made.jsonl"):
    assert read_bytes(os.path.join(killed, name)) == read_bytes(os.path.join(whole, name)), name
  assert len(read_jsonl(os.path.join(whole, "web_rewrite.jsonl"))) == 4


def test_the_output_does_not_depend_on_items_per_round(openai_server, tmp_path):
  openai_server.reply = reply
  seeds = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
  for n in (1, 64):
    synth(openai_server, str(tmp_path / f"r{n}"), "rejection_sampling", seeds, *REJECTION_FLAGS,
          f"--config.items_per_round={n}", f"--config.concurrency={1 if n == 1 else 8}")
  for name in ("rejection_sampling.jsonl", "summary.json"):
    assert read_bytes(tmp_path / "r1" / name) == read_bytes(tmp_path / "r64" / name), name
  assert len(read_jsonl(tmp_path / "r1" / "rejection_sampling.jsonl")) == 5


# -- 9. bad input ------------------------------------------------------------------------------
def test_unknown_types_seeds_and_generators_are_refused_by_name(openai_server, tmp_path):
  seeds, out = write_jsonl(tmp_path / "seeds.jsonl", DOCS), str(tmp_path / "out")
  known = "web_rewrite, qa_extraction, self_revision, instruction_reversal, multi_agent, rejection_sampling"
  with pytest.raises(ValueError, match=f"--type='bogus': unknown type; known types: {known}$"):
    synth(openai_server, out, "bogus", seeds)
  with pytest.raises(ValueError, match=r"--seeds: '.*/nothing\*\.jsonl' matches no file"):
    synth(openai_server, out, "web_rewrite", str(tmp_path / "nothing*.jsonl"))
  assert not os.path.exists(os.path.join(out, "web_rewrite.jsonl"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=r"is neither a workdir \(no checkpoints/\) nor a Hugging Face folder"):
    synth(openai_server, out, "web_rewrite", seeds, generator=str(empty))
  with pytest.raises(ValueError, match=r"--generator='.*/missing': not a directory, and not an http\(s\)://"):
    synth(openai_server, out, "web_rewrite", seeds, generator=str(tmp_path / "missing"))
  with pytest.raises(ValueError, match=r"seed q3: no `answer` or `tests` \(--config.plurality=true"):
    synth(openai_server, out, "rejection_sampling", write_jsonl(tmp_path / "q.jsonl", QUESTIONS))
  assert openai_server.requests == []
  with pytest.raises(SystemExit, match="error: --seeds: required with --type"):
    main(["--type=web_rewrite", f"--generator={spec(openai_server)}", f"--out={out}"])


def test_an_endpoint_that_refuses_every_request_stops_the_run_with_nothing_written(openai_server,
                                                                                    tmp_path):
  openai_server.reply, openai_server.default = reply, "500"
  seeds, out = write_jsonl(tmp_path / "seeds.jsonl", DOCS), str(tmp_path / "out")
  port = openai_server.server_address[1]
  generator = spec(openai_server, ",retries=1,backoff_s=0")
  with pytest.raises(EndpointError, match=rf"^http://127\.0\.0\.1:{port}/v1 \(fake\): HTTP 500 after 2 "):
    synth(openai_server, out, "web_rewrite", seeds, generator=generator)
  assert len(openai_server.requests) == 4  # 2 items, 2 attempts each
  assert read_bytes(os.path.join(out, "web_rewrite.jsonl")) == b""
  assert not os.path.exists(os.path.join(out, "summary.json"))
  for log in ("made", "log"):
    log = os.path.join(out, "log", f"web_rewrite.{log}.jsonl")
    assert not os.path.exists(log) or read_bytes(log) == b""
  # one item fails while the other is answered: still nothing logged; back up, a rerun makes both
  openai_server.default, openai_server.script = "ok", ["500"] * 3
  with pytest.raises(EndpointError, match="HTTP 500 after 2 attempt"):
    synth(openai_server, out, "web_rewrite", seeds, generator=generator)
  assert not os.path.exists(os.path.join(out, "log", "web_rewrite.made.jsonl"))
  s = synth(openai_server, out, "web_rewrite", seeds, generator=generator)
  assert s["types"]["web_rewrite"]["accepted"] == 2
  assert [r["text"] for r in read_jsonl(os.path.join(out, "web_rewrite.jsonl"))] == [
      REWRITES["Photosynthesis"], REWRITES["prime number"]]


# -- 10. our sampler ---------------------------------------------------------------------------
def _counts_add_up(out, name, s):
  item_rejections = sum("rejected" in line for line in log_lines(out, name))
  assert s["accepted"] + sum(s["rejected"].values()) == s["generated"] + item_rejections
  return item_rejections


def test_the_sampler_on_a_tiny_model_counts_what_it_made_and_repeats_itself(tiny_hf_dir, tmp_path):
  seeds = write_jsonl(tmp_path / "seeds.jsonl", DOCS)
  flags = ("--config.max_new_tokens=8", "--config.min_tokens=0")
  runs = [str(tmp_path / "a"), str(tmp_path / "b")]
  summaries = [synth(None, runs[0], "web_rewrite", seeds, *flags, generator=tiny_hf_dir),
               synth(None, runs[1], "web_rewrite", seeds, *flags, "--config.items_per_round=1",
                     "--config.max_batch=1", generator=tiny_hf_dir)]
  path = os.path.realpath(tiny_hf_dir)
  files = {n: os.path.getsize(os.path.join(path, n)) for n in sorted(os.listdir(path))
           if n.endswith((".json", ".safetensors"))}
  assert "model.safetensors" in files and summaries[0]["generator"] == {"hf_dir": path, "files": files}
  s = summaries[0]["types"]["web_rewrite"]
  assert s["items"] == 2 and s["generated"] + _counts_add_up(runs[0], "web_rewrite", s) == 2
  styles = [web_rewrite.STYLES[zlib.crc32(f"{d['id']}/p0".encode()) % 3] for d in DOCS]
  asks = [list(web_rewrite.PROMPTS.messages(st, passage=d["text"])) for st, d in zip(styles, DOCS)]
  prompts = sum(len(rollouts.question_prompt({"messages": messages})) for messages in asks)
  assert s["generator_tokens"] >= prompts + 2  # (each reply: its tokens and a stop)
  records = read_jsonl(os.path.join(runs[0], "web_rewrite.jsonl"))
  assert len(records) == s["accepted"] and all(r["generator"] == summaries[0]["generator"] for r in records)
  assert sum(tokens(r) for r in records) == s["unique_tokens"]
  # the same sampling keys whatever the batching: the same bytes
  for name in ("web_rewrite.jsonl", "summary.json", "log/web_rewrite.made.jsonl"):
    assert read_bytes(os.path.join(runs[0], name)) == read_bytes(os.path.join(runs[1], name)), name
  # a kill mid-write on the sampler backend (logs cut in the middle of a line, the output gone):
  # the same command makes only what is missing, and the same bytes
  for name in ("log/web_rewrite.made.jsonl", "log/web_rewrite.log.jsonl"):
    data = read_bytes(os.path.join(runs[1], name))
    with open(os.path.join(runs[1], name), "wb") as f:
      f.write(data[:data.index(b"\n") + 10])
  os.remove(os.path.join(runs[1], "web_rewrite.jsonl"))
  synth(None, runs[1], "web_rewrite", seeds, *flags, generator=tiny_hf_dir)
  for name in ("web_rewrite.jsonl", "summary.json", "log/web_rewrite.made.jsonl", "log/web_rewrite.log.jsonl"):
    assert read_bytes(os.path.join(runs[0], name)) == read_bytes(os.path.join(runs[1], name)), name
  # rejection sampling's n solutions of one question (one prefill, n samples), with a plurality vote
  out = str(tmp_path / "rs")
  questions = write_jsonl(tmp_path / "q.jsonl", [QUESTIONS[0], QUESTIONS[2]])
  s = synth(None, out, "rejection_sampling", questions, *flags, "--config.num_solutions=3",
            "--config.plurality=true", generator=tiny_hf_dir)["types"]["rejection_sampling"]
  assert s["items"] == 2 and s["generator_tokens"] > 0
  _counts_add_up(out, "rejection_sampling", s)


# -- the seed filter ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, seeds, kept_text", [
    ("self_revision", TASKS, "Explain why the sky looks blue."),
    ("multi_agent", DOCS, "Photosynthesis converts light"),
    ("rejection_sampling", QUESTIONS[:2], "What is 2 + 3?"),
])
def test_the_seed_filter_scores_each_types_seed_text_and_skips_low_ones(name, seeds, kept_text, openai_server,
                                                                        tmp_path):
  scored = []

  def filtered(body):
    p = body["messages"][-1]["content"]
    if p.startswith("Rate the text below"):
      text = p.split("Text:\n", 1)[1]
      scored.append(text)
      return "information: 4\ncomplexity: 3\nreasoning: 5" if kept_text in text else \
          "information: 4\ncomplexity: 2\nreasoning: 5"
    if p.startswith("What is"):  # (the solutions are asked at step 1, after the filter's step 0)
      return next(text for q, texts in SOLUTIONS.items() for j, text in enumerate(texts)
                  if sample_key("rejection_sampling", q, j, step=1) == body["seed"])
    return reply(body)

  openai_server.reply = filtered
  out = str(tmp_path / "out")
  extra = {"multi_agent": ["--config.turns=2"], "rejection_sampling": ["--config.num_solutions=2"]}.get(name, [])
  summary = synth(openai_server, out, name, write_jsonl(tmp_path / "seeds.jsonl", seeds), "--config.seed_filter=true",
                  *extra)
  texts = [s.get("text") or s["question"] for s in seeds]
  assert sorted(scored) == sorted(texts)  # each item's own seed text, once (requests run concurrently)
  s = summary["types"][name]
  assert s["rejected"].get("seed_filter") == 1 and s["items"] == 2
  kept = read_jsonl(os.path.join(out, f"{name}.jsonl"))
  assert kept and all(r["seed_id"] == seeds[0]["id"] for r in kept)
  assert kept[0]["trail"][0] == {"seed_scores": {"information": 4, "complexity": 3, "reasoning": 5}}

"""Decontamination on hand-built tables: 13-gram matches (allow-listed and common ones kept), the
7-gram thresholds, clean copies in each format, the report, and a rerun after a kill."""

import collections
import gzip
import json
import os
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4_jax.data import corpus, decontam
from phi4_jax.data.formats import Record
from phi4_jax.eval import answers

ITEM = " ".join(f"w{i}" for i in range(1, 21))  # 20 distinct words: 14 7-grams, 8 13-grams
SHARED = "the quick brown fox jumps over the lazy dog near the river bank"  # 13 words, in 2 items
ALLOWED = "a b c d e f g h i j k l m"
FILLER = " ".join(f"x{i}" for i in range(30))


def words(first, last):
  return " ".join(f"w{i}" for i in range(first, last + 1))


DOCS = [  # (text, verdict)
    (f"Intro. {words(3, 15).upper()}, then more.", "contaminated"),  # a 13-gram, other case and punctuation
    (f"{FILLER} {ALLOWED} {FILLER}", None),  # only an allow-listed 13-gram
    (f"{FILLER} {SHARED}! {FILLER}", None),  # only a 13-gram common to 2 items
    (f"{FILLER} {words(1, 12)} {FILLER} {words(9, 20)}", "contaminated"),  # 7-grams: 12 / 14 = 0.86
    (f"{FILLER} {words(1, 12)} {FILLER}", "partial"),  # 6 / 14 = 0.43
    (f"{FILLER} {words(1, 8)} {FILLER}", None),  # 2 / 14 = 0.14
    ("nothing in common at all", None),
]


@pytest.fixture
def setup(tmp_path):
  bench = tmp_path / "bench.jsonl"
  bench.write_text("".join(json.dumps(r) + "\n" for r in [
      {"id": "q1", "question": ITEM},
      {"id": "q2", "question": f"other words entirely {SHARED}", "choices": ["x"]},
      {"id": "q3", "question": f"{SHARED} and {ALLOWED}"}]))
  allow = tmp_path / "allow.txt"
  allow.write_text(ALLOWED.upper().replace(" ", ", ") + "\n")
  src = tmp_path / "src"
  src.mkdir()
  texts = [t for t, _ in DOCS]
  (src / "a.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
  with gzip.open(src / "b.jsonl.gz", "wt") as f:
    f.write("".join(json.dumps({"text": t}) + "\n" for t in texts) + "not json\n")
  pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), src / "c.parquet", row_group_size=3)
  spec = tmp_path / "cfg.py"
  spec.write_text(
      "from phi4_jax.data import config as d\nfrom experiments.pretrain import get_config as base\n"
      "def get_config(arg=''):\n  c = base('test')\n"
      f"  c.data = d.data({{'plain': d.source('{src}/a.jsonl', 0.4), 'gz': d.source('{src}/b.jsonl.gz', 0.3), "
      f"'pq': d.source('{src}/c.parquet', 0.3)}}, cache_dir='{tmp_path}/cache')\n  return c\n")
  return str(bench), str(allow), f"{spec}:x", tmp_path


def kept_texts(out, name, fname):
  path = os.path.join(out, name, fname)
  if fname.endswith(".parquet"):
    return pq.read_table(path).column("text").to_pylist()
  opener = gzip.open if fname.endswith(".gz") else open
  with opener(path, "rt") as f:
    return [json.loads(line)["text"] if line.startswith("{") else line.strip() for line in f]


def test_thirteen_grams_allow_lists_and_seven_gram_thresholds(setup):
  bench, allow, spec, tmp = setup
  out = str(tmp / "out")
  settings = decontam.Settings(common_items=2, contaminated_ratio=0.5, partial_ratio=0.2)
  result = decontam.run(bench, spec, out, allow, settings, progress=None)
  expect_removed = [t for t, v in DOCS if v == "contaminated"]
  expect_kept = [t for t, v in DOCS if v != "contaminated"]
  assert kept_texts(out, "plain", "a.jsonl") == expect_kept
  assert kept_texts(out, "gz", "b.jsonl.gz") == expect_kept + ["not json"]  # unreadable: kept as is
  assert kept_texts(out, "pq", "c.parquet") == expect_kept
  assert pq.read_table(os.path.join(out, "pq", "c.parquet")).column("n").to_pylist() == [
      i for i, (_, v) in enumerate(DOCS) if v != "contaminated"]  # other columns kept with their rows
  report = [json.loads(line) for line in open(os.path.join(out, "plain", "a.jsonl.report.jsonl"))]
  flagged = {r["record"]: r for r in report[:-1]}
  assert {i: r["verdict"] for i, r in flagged.items()} == {i: v for i, (_, v) in enumerate(DOCS) if v}
  assert flagged[0]["item"] == "bench.jsonl/q1" and flagged[0]["ngram"] == words(3, 15)
  assert flagged[3]["ratio"] == pytest.approx(12 / 14, abs=1e-4) and flagged[4]["ratio"] == pytest.approx(6 / 14, abs=1e-4)
  assert not flagged[4]["removed"]
  assert result["sources"]["plain"] == {"docs": 7, "kept": 5, "contaminated": 2, "partial": 1, "unreadable": 0,
                                        "bytes": os.path.getsize(tmp / "src" / "a.jsonl")}
  assert result["sources"]["gz"]["unreadable"] == 1
  assert len(expect_removed) == 2 and f"--config.data.sources.pq.globs={out}/pq/c.parquet" in result["flags"]
  # the partial one goes too with drop_partial
  strict = decontam.run(bench, spec, str(tmp / "strict"), allow,
                        decontam.Settings(common_items=2, drop_partial=True), progress=None)
  assert strict["sources"]["plain"]["kept"] == 4
  # the command's flags give the same run (a bool flag parses true/false)
  decontam.main(["--benchmarks", bench, "--sources", spec, "--out", str(tmp / "cli"), "--allow", allow,
                 "--common_items=2", "--drop_partial=true"])
  assert json.load(open(tmp / "cli" / "summary.json"))["sources"] == strict["sources"]


def test_a_rerun_skips_finished_files_and_redoes_the_rest_alike(setup):
  bench, allow, spec, tmp = setup
  out = str(tmp / "out")
  settings = decontam.Settings(common_items=2)
  first = decontam.run(bench, spec, out, allow, settings, progress=None)
  copy = open(os.path.join(out, "plain", "a.jsonl"), "rb").read()
  os.remove(os.path.join(out, "plain", "a.jsonl.report.jsonl"))  # killed before the report landed
  os.remove(os.path.join(out, "pq", "c.parquet"))
  again = decontam.run(bench, spec, out, allow, settings, progress=None)
  assert again["sources"] == first["sources"]
  assert open(os.path.join(out, "plain", "a.jsonl"), "rb").read() == copy
  assert kept_texts(out, "pq", "c.parquet") == [t for t, v in DOCS if v != "contaminated"]
  assert os.path.exists(os.path.join(out, "index.pkl"))


def test_bad_input_is_named(setup):
  bench, allow, spec, tmp = setup
  with pytest.raises(ValueError, match=r"--benchmarks: 'nope/\*.jsonl' is not humaneval, embedded:<set> or a glob"):
    decontam.run("nope/*.jsonl", spec, str(tmp / "o"), progress=None)
  with pytest.raises(ValueError, match=r"--partial_ratio \(0.6\) and --contaminated_ratio \(0.5\)"):
    decontam.run(bench, spec, str(tmp / "o"), settings=decontam.Settings(partial_ratio=0.6), progress=None)
  (tmp / "bad.jsonl").write_text('{"question": "x"}\nnot json\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
    decontam.run(str(tmp / "bad.jsonl"), spec, str(tmp / "o"), progress=None)


def test_embedded_corpus_against_humaneval_and_the_exercises():
  items = decontam.benchmark_items("humaneval,embedded:exercises")
  assert len(items) == 164 + 256 + 256  # embedded:exercises: answers' items and choice's
  index = decontam.Index.build(items, [], common_items=5)
  humaneval_0 = items[0][1]
  assert index.verdict("Some blog post quoting: " + humaneval_0, decontam.Settings())["item"] == "HumanEval/0"


def test_a_recipe_is_checked_stage_by_stage_and_the_colab_recipe_is_clean(data_cache, tmp_path, monkeypatch):
  """Issue #23's command: every stage of recipe.py:colab (sources, pairs, data stages' questions)
  against the embedded sets: no contaminated document. A planted held-out item is found."""
  monkeypatch.setenv("PHI4_JAX_CACHE", data_cache)
  out = tmp_path / "out"
  decontam.main(["--benchmarks=embedded:exercises,embedded:parity",
                 "--sources=experiments/recipe.py:colab", f"--out={out}"])
  result = json.load(open(out / "summary.json"))
  assert result["contaminated"] == 0 and result["benchmark_items"] == 256 + 256 + 256
  stages = result["stages"]
  assert list(stages) == ["pretrain", "midtrain", "sft", "synth", "sft_synth", "refusal", "pts", "dpo_pts", "judge",
                          "dpo_judge"]
  assert stages["synth"] == {}  # (its generations are decontaminated in the loop, against embedded:parity)
  # (a parity question whose list shares a run of digits and its answer with a held-out one: partial)
  assert stages["pts"] == {"questions": {"docs": 512, "contaminated": 0, "partial": 185}}
  assert stages["refusal"] == {"questions": {"docs": 32, "contaminated": 0, "partial": 6}}
  assert stages["judge"]["questions"]["docs"] == 64 and set(stages["dpo_judge"]) == {"math"}
  assert stages["dpo_pts"] == {}  # (PTS and refusal pairs: made by the run, checked by their stages)
  with open(os.path.join(corpus.build_posttrain(data_cache), "dpo_pairs.jsonl")) as f:
    assert stages["dpo_judge"]["math"]["docs"] == sum(1 for _ in f) == 800
  assert stages["pretrain"]["synthetic"] == stages["midtrain"]["replay/synthetic"]
  assert [s.split(":")[0] for s in result["skipped"]] == ["sft_synth/synth", "dpo_pts/pts", "dpo_pts/refusal",
                                                         "dpo_judge/judge", "dpo_judge/refusal"]
  (math,) = [f for f in result["flags"] if f.startswith("--config.sft.data.sources.math.globs=")]
  copies = math.split("=", 1)[1].split(",")  # (the clean copies by name: no report, no temporary)
  assert copies and all(c.startswith(f"{out}/sft/math/") and ".report." not in c and os.path.isfile(c)
                        for c in copies)
  assert result["docs"] == sum(c["docs"] for s in stages.values() for c in s.values())
  # a held-out exercise in SFT's math file and as a PTS question: both found
  ex = answers.read_items("embedded:exercises", ())[3]
  planted = tmp_path / "planted.jsonl"
  planted.write_text(json.dumps({"messages": [{"role": "user", "content": ex["question"]},
                                              {"role": "assistant", "content": ex["solution"]}]}) + "\n")
  questions = tmp_path / "questions.jsonl"
  questions.write_text(json.dumps({"id": "q", "question": ex["question"], "answer": ex["answer"],
                                   "solution": ex["solution"]}) + "\n")
  spec = tmp_path / "recipe.py"
  spec.write_text("from experiments.recipe import get_config as base\ndef get_config(arg=''):\n"
                  "  c = base('colab')\n  c.stages = ('sft', 'pts')\n"
                  f"  c.sft.data.sources.math.globs = '{planted}'\n"
                  f"  c.pts.questions, c.pts.num_questions = '{questions}', 0\n"
                  "  return c\n")
  found = decontam.run("embedded:exercises", f"{spec}:x", str(tmp_path / "planted"), progress=None)
  assert found["stages"]["sft"]["math"]["contaminated"] == 1
  assert found["stages"]["pts"]["questions"]["contaminated"] == 1 and found["contaminated"] == 2
  report = [json.loads(line) for line in open(tmp_path / "planted" / "pts" / "questions.report.jsonl")]
  assert report[0]["question"] == "q" and report[0]["item"] == "embedded:exercises/3"


def test_a_pair_is_read_as_its_prompt_chosen_and_rejected_text():
  pair = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
          "chosen": "good", "rejected": "bad", "answer": "4"}
  assert decontam.document_text(Record(pair, "f:1")) == "S\nQ\ngood\nbad"
  assert decontam.document_text(Record({"prompt": "P", "chosen": "c", "rejected": "r"}, "f:2")) == "P\nc\nr"
  assert decontam.document_text(Record([{"role": "user", "content": "hi"}], "f:3")) == "hi"
  assert decontam.document_text(Record({"chosen": 3}, "f:4")) is None


class FirstIndex:
  """The index and verdict as first written (a regex for the words, tuples and dicts for the
  n-grams): the faster ones must agree with them exactly."""

  def __init__(self, items, allow, common_items):
    tokenized = [self.words(text) for _, text in items]
    long_items = collections.defaultdict(set)
    for k, ws in enumerate(tokenized):
      for g in self.grams(ws, 13):
        long_items[g].add(k)
    self.allowed = {tuple(self.words(line)) for line in allow if len(self.words(line)) == 13}
    self.allowed |= {g for g, ks in long_items.items() if len(ks) >= common_items}
    boilerplate = set().union(*(self.grams(list(g), 7) for g in self.allowed))
    self.short, self.counts = collections.defaultdict(list), []
    for k, ws in enumerate(tokenized):
      grams = self.grams(ws, 7) - boilerplate
      for g in grams:
        self.short[g].append(k)
      self.counts.append(len(grams))
    self.long = {g: min(ks) for g, ks in long_items.items() if g not in self.allowed}
    self.items = [i for i, _ in items]

  @staticmethod
  def words(text):
    return re.sub(r"[\W_]+", " ", text.lower()).split()

  @staticmethod
  def grams(ws, n):
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}

  def verdict(self, text, settings):
    ws = self.words(text)
    for g in (tuple(ws[i:i + 13]) for i in range(len(ws) - 13 + 1)):
      if g in self.long:
        return {"verdict": "contaminated", "item": self.items[self.long[g]], "ngram": " ".join(g)}
    unique = self.grams(ws, 7)
    shared = collections.Counter(k for g in unique & self.short.keys() for k in self.short[g])
    if not shared:
      return None
    ratio, k = max((n / max(1, min(len(unique), self.counts[k])), k) for k, n in shared.items())
    for name, threshold in (("contaminated", settings.contaminated_ratio), ("partial", settings.partial_ratio)):
      if ratio >= threshold:
        return {"verdict": name, "item": self.items[k], "ratio": round(ratio, 4)}
    return None


def spliced(items, count, seed):
  """Documents made of runs of benchmark items' words (some upper case, odd separators) between
  filler words."""
  rng, docs = random.Random(seed), []
  for _ in range(count):
    parts = []
    for _ in range(rng.randrange(1, 5)):
      ws = FirstIndex.words(rng.choice(items)[1])
      start = rng.randrange(len(ws))
      run = ws[start:start + rng.choice([3, 6, 7, 8, 12, 13, 14, 40, 200])]
      parts.append(rng.choice([" ", ", ", "\n", "_"]).join(w.upper() if rng.random() < 0.2 else w for w in run))
      parts.append(" ".join(f"filler{rng.randrange(50)}" for _ in range(rng.randrange(0, 30))))
    docs.append(" ".join(parts))
  return docs


def test_words_match_the_regex_on_ascii_and_beyond():
  every = "".join(map(chr, range(128)))
  assert decontam.words(every) == FirstIndex.words(every) == ["0123456789", *["abcdefghijklmnopqrstuvwxyz"] * 2]
  rng = random.Random(0)
  alphabet = every + "éÉßİıΣ½²٣\u0301\u00a0\u2028\x85—“”\u212a\u01c5\ud800𝔸🤗"  # (İ, K lower to ASCII)
  for _ in range(3000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
    assert decontam.words(text) == FirstIndex.words(text), ascii(text)


def test_verdicts_agree_with_the_first_implementation():
  """Every verdict, item, 13-gram and ratio as the first implementation gives them, one document
  at a time and in batches, with common 13-grams allow-listed or not."""
  items = decontam.benchmark_items("humaneval,embedded:exercises")
  docs = spliced(items, 300, seed=1)
  found = collections.Counter()
  for common_items in (5, 2):
    index, first = decontam.Index.build(items, [], common_items), FirstIndex(items, [], common_items)
    assert index.allowed == first.allowed
    for settings in (decontam.Settings(), decontam.Settings(contaminated_ratio=0.9, partial_ratio=0.05)):
      expected = [first.verdict(text, settings) for text in docs]
      assert index.verdicts(docs, settings) == expected
      assert [index.verdict(text, settings) for text in docs[:50]] == expected[:50]
      found.update((e or {}).get("verdict") for e in expected)
  assert min(found.values()) > 50, found  # each verdict (and clean) well represented


def test_items_too_short_for_a_13_gram_and_documents_too_short_for_a_7_gram():
  items = [("a", "one two three four five six seven eight"), ("b", "nine ten")]
  index, first = decontam.Index.build(items, [], 5), FirstIndex(items, [], 5)
  docs = ["", "one", "x one two three four five six seven y " * 3, "ONE two three four five six seven eight nine",
          "one two three four five six seven eight nine ten one two three"]  # (13 words the items have)
  assert len(index.long) == 0 and index.verdicts([], decontam.Settings()) == []
  assert index.verdicts(docs, decontam.Settings()) == [first.verdict(d, decontam.Settings()) for d in docs]
  assert index.verdict(docs[3], decontam.Settings()) == {"verdict": "contaminated", "item": "a", "ratio": 1.0}


@pytest.mark.parametrize("mix", ["same", "mod3"])
def test_colliding_hashes_make_no_false_match(setup, monkeypatch, mix):
  """With the word hash made useless (every window alike, or 3 values a word), every hit is
  checked against the words: the same verdicts as the first implementation."""
  from phi4_jax.data import overlap
  bench, allow, _, _ = setup
  useless = {"same": lambda ids: np.zeros(len(ids), np.uint64), "mod3": lambda ids: (ids % 3).astype(np.uint64)}
  monkeypatch.setattr(overlap, "mixed", useless[mix])
  items = decontam.benchmark_items(bench)
  allowed = open(allow).read().splitlines()
  docs = [t for t, _ in DOCS] + spliced(items, 100, seed=2) + [words(1, 20) + " " + words(1, 20)]
  index, first = decontam.Index.build(items, allowed, 2), FirstIndex(items, allowed, 2)
  for settings in (decontam.Settings(), decontam.Settings(contaminated_ratio=0.9, partial_ratio=0.05)):
    assert index.verdicts(docs, settings) == [first.verdict(text, settings) for text in docs]
  assert not index._tables[0].distinct and not index._tables[1].distinct  # (the tables' hashes collide)


def test_worker_processes_give_the_same_copies_reports_and_counts(setup):
  bench, allow, spec, tmp = setup
  settings = decontam.Settings(common_items=2)
  one = decontam.run(bench, spec, str(tmp / "one"), allow, settings, progress=None)
  two = decontam.run(bench, spec, str(tmp / "two"), allow, settings, progress=None, workers=2)
  assert two["sources"] == one["sources"]
  assert two["flags"] == [f.replace("/one/", "/two/") for f in one["flags"]]
  for name in ("plain", "gz", "pq"):
    files = sorted(os.listdir(tmp / "one" / name))
    assert files == sorted(os.listdir(tmp / "two" / name)) and len(files) == 2
    for f in files:
      assert (tmp / "one" / name / f).read_bytes() == (tmp / "two" / name / f).read_bytes(), f

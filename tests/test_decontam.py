"""Decontamination on hand-built tables: 13-gram matches (allow-listed and common ones kept), the
7-gram thresholds, clean copies in each format, the report, and a rerun after a kill."""

import gzip
import json
import os

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
  assert list(stages) == ["pretrain", "midtrain", "sft", "refusal", "pts", "dpo_pts", "judge", "dpo_judge"]
  # (a parity question whose list shares a run of digits and its answer with a held-out one: partial)
  assert stages["pts"] == {"questions": {"docs": 64, "contaminated": 0, "partial": 23}}
  assert stages["refusal"] == {"questions": {"docs": 32, "contaminated": 0, "partial": 6}}
  assert stages["judge"]["questions"]["docs"] == 64 and set(stages["dpo_pts"]) == {"math"}
  with open(os.path.join(corpus.build_posttrain(data_cache), "dpo_pairs.jsonl")) as f:
    assert stages["dpo_pts"]["math"]["docs"] == sum(1 for _ in f) == 800
  assert stages["pretrain"]["synthetic"] == stages["midtrain"]["replay/synthetic"]
  assert [s.split(":")[0] for s in result["skipped"]] == ["dpo_pts/pts", "dpo_pts/refusal", "dpo_judge/judge",
                                                         "dpo_judge/refusal"]
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
  assert decontam._document_text(Record(pair, "f:1")) == "S\nQ\ngood\nbad"
  assert decontam._document_text(Record({"prompt": "P", "chosen": "c", "rejected": "r"}, "f:2")) == "P\nc\nr"
  assert decontam._document_text(Record([{"role": "user", "content": "hi"}], "f:3")) == "hi"
  assert decontam._document_text(Record({"chosen": 3}, "f:4")) is None

"""python -m phi4_jax.curate in-process: clean copies in each file's own format, a report of what
removed each document, counts per step, a resumed run's bytes, unreadable files, bad input."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4_jax.curate.__main__ import main

GOOD = [
    "The water cycle moves water between the oceans, the air and the land. Heat from the sun evaporates "
    "water from the sea, and the vapour rises until it cools and condenses into clouds. When the droplets "
    "grow heavy enough they fall as rain or snow, which feeds rivers and lakes and soaks into the ground, "
    "where plants take it up before the rivers carry the rest back to the sea again.",
    "A lever is a rigid bar that turns about a fixed point called the fulcrum. When a small force pushes on "
    "the long arm of the lever, the short arm can lift a much heavier load, because the work done on each "
    "side is the same: force times distance. This is why a long crowbar can move a stone that no person "
    "could lift with their hands alone, and why a seesaw balances children of different weights.",
    "Bread rises because yeast feeds on the sugars in the dough and releases carbon dioxide gas. The gas is "
    "trapped by a stretchy network of gluten proteins that forms when flour is mixed with water and "
    "kneaded. In the heat of the oven the bubbles expand, the yeast dies, and the proteins and starches set "
    "into the light and airy structure that we recognise as a loaf, with a brown crust on the outside.",
    "Volcanoes form where molten rock from deep inside the earth finds a way to the surface. Along the "
    "edges of tectonic plates the crust is thin or broken, and magma collects in chambers below the "
    "ground. When the pressure of the gases in the magma becomes too great, it bursts through the crust as "
    "an eruption of lava, ash and steam, and over many eruptions the layers build up into a mountain.",
    "The heart is a muscular pump with four chambers that keeps blood moving around the body. The right "
    "side receives blood that has given up its oxygen and sends it to the lungs, where it picks up fresh "
    "oxygen and releases carbon dioxide. The left side then pumps this oxygen rich blood through the "
    "arteries to every organ, and valves between the chambers stop the blood from flowing backwards.",
]
BENCHMARK = ("a question about a famous puzzle: how many ways can eight queens be placed on a chess board "
             "so that no two queens attack each other on any row column or diagonal")


def _near(text: str) -> str:
  """The text with two words changed: a near duplicate."""
  words = text.split()
  words[5], words[20] = "certainly", "quickly"
  return " ".join(words)


@pytest.fixture
def corpus(tmp_path):
  """Three files of one source: a.jsonl (5 records), b.jsonl.gz (3), c.parquet (3 rows, 2 columns),
  and a benchmark file whose item shares a 13-gram with one record."""
  src = tmp_path / "in"
  src.mkdir()
  a = [{"text": GOOD[0]}, {"text": "too short to keep"}, {"text": GOOD[0].replace(",", ";")},
       {"text": GOOD[1] + " " + BENCHMARK}, {"no_text": 1}]
  (src / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in a))
  with gzip.open(src / "b.jsonl.gz", "wt") as f:
    f.write("".join(json.dumps({"text": t}) + "\n" for t in (GOOD[2], _near(GOOD[2]), GOOD[3])))
  pq.write_table(pa.table({"text": [GOOD[4], GOOD[3], "x " * 80], "url": ["u0", "u1", "u2"]}), src / "c.parquet")
  bench = tmp_path / "bench.jsonl"
  bench.write_text(json.dumps({"id": "q1", "question": BENCHMARK}) + "\n")
  return tmp_path


def _run(corpus, out, *flags):
  main([f"--input={corpus / 'in' / '*'}", f"--out={out}", "--steps=filter,dedup,decontam",
        f"--config.decontam.benchmarks={corpus / 'bench.jsonl'}", *flags])
  return json.loads((out / "summary.json").read_text())


def _outputs(out):
  return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
          if p.is_file() and p.parts[len(out.parts)] == "input"}


def test_a_run_keeps_what_passes_in_each_format_and_reports_why_the_rest_went(corpus, tmp_path):
  out = tmp_path / "out"
  summary = _run(corpus, out)
  lines = (corpus / "in" / "a.jsonl").read_bytes().splitlines(keepends=True)
  assert (out / "input" / "a.jsonl").read_bytes() == lines[0]  # the rest: short, duplicate, contaminated, no text
  with gzip.open(out / "input" / "b.jsonl.gz", "rt") as f:
    assert [json.loads(x)["text"] for x in f] == [GOOD[2], GOOD[3]]  # the near duplicate goes
  assert pq.read_table(out / "input" / "c.parquet").to_pylist() == [{"text": GOOD[4], "url": "u0"}]
  report = [json.loads(x) for x in (out / "input" / "a.jsonl.report.jsonl").read_text().splitlines()]
  assert [(r["record"], r["step"], r["reason"]) for r in report[:-1]] == [
      (1, "filter", "too_few_words"), (2, "dedup", "exact"), (3, "decontam", "contaminated"),
      (4, "read", "unreadable")]
  assert report[1]["kept"] == [0, 0] and report[-1]["done"] is True
  b = [json.loads(x) for x in (out / "input" / "b.jsonl.gz.report.jsonl").read_text().splitlines()]
  assert [(r["record"], r["step"], r["reason"], r.get("kept")) for r in b[:-1]] == [(1, "dedup", "fuzzy", [1, 0])]
  c = [json.loads(x) for x in (out / "input" / "c.parquet.report.jsonl").read_text().splitlines()]
  assert [(r["record"], r["step"], r["reason"]) for r in c[:-1]] == [(1, "dedup", "exact"), (2, "filter", c[1]["reason"])]
  total = summary["total"]
  assert (total["docs"], total["kept"], total["files"]) == (11, 4, 3)
  assert total["removed"] == {"read": 1, "filter": 2, "dedup": 3, "decontam": 1}
  assert total["reasons"]["dedup"] == {"exact": 2, "fuzzy": 1}


def test_a_killed_run_redoes_only_what_is_missing_with_the_same_result(corpus, tmp_path):
  whole = tmp_path / "whole"
  _run(corpus, whole)
  cut = tmp_path / "cut"
  _run(corpus, cut)
  for name in ("000001.npz", "000001.json"):
    (cut / "work" / name).unlink()  # as if killed while measuring file 1 ...
  (cut / "input" / "c.parquet").unlink()  # ... or while writing c.parquet
  (cut / "summary.json").unlink()
  measured = (cut / "work" / "000000.json").stat().st_mtime_ns
  _run(corpus, cut)
  assert (cut / "work" / "000000.json").stat().st_mtime_ns == measured  # not measured again
  assert _outputs(cut) == _outputs(whole)
  assert (cut / "summary.json").read_bytes() == (whole / "summary.json").read_bytes()


def test_an_unreadable_file_stops_the_run_or_is_left_out(corpus, tmp_path):
  (corpus / "in" / "d.parquet").write_bytes(b"PAR1 this is not a parquet file")
  with pytest.raises(ValueError, match=r"d\.parquet.*on_unreadable=skip"):
    _run(corpus, tmp_path / "stop")
  summary = _run(corpus, tmp_path / "skip", "--config.on_unreadable=skip")
  assert summary["total"]["unreadable_files"] == 1 and summary["total"]["kept"] == 4
  assert not (tmp_path / "skip" / "input" / "d.parquet").exists()
  assert "unreadable" in (tmp_path / "skip" / "input" / "d.parquet.report.jsonl").read_text()


def test_bad_input_is_named(corpus, tmp_path):
  with pytest.raises(ValueError, match=r"nothing\*\.jsonl"):
    main([f"--input={tmp_path / 'nothing*.jsonl'}", f"--out={tmp_path / 'o1'}"])
  with pytest.raises(ValueError, match=r"config\.filter\.min_doc_words"):
    main([f"--input={corpus / 'in' / '*'}", f"--out={tmp_path / 'o2'}", "--config.filter.min_doc_words=-1"])
  with pytest.raises(ValueError, match=r"unknown field config\.filter\.min_words"):
    main([f"--input={corpus / 'in' / '*'}", f"--out={tmp_path / 'o3'}", "--config.filter.min_words=3"])
  with pytest.raises(ValueError, match=r"--steps='filter,sort'"):
    main([f"--input={corpus / 'in' / '*'}", f"--out={tmp_path / 'o4'}", "--steps=filter,sort"])
  with pytest.raises(ValueError, match=r"--ray_address=127\.0\.0\.1:9: no Ray cluster answers there"):
    main([f"--input={corpus / 'in' / '*'}", f"--out={tmp_path / 'o5'}", "--ray_address=127.0.0.1:9"])


def test_classify_keeps_the_documents_a_trained_classifier_scores_high(tmp_path):
  """`train` on annotations that follow a hidden rule, then a run with only the classify step: the
  documents with a hidden word stay, the others go (step classify, with their scores)."""
  from test_curate_classifier import FILLER, HIDDEN, hidden_rule_annotations
  annotations = tmp_path / "annotations.jsonl"
  annotations.write_text("".join(json.dumps(r) + "\n" for r in hidden_rule_annotations(600)))
  main(["train", f"--annotations={annotations}", f"--out={tmp_path / 'clf'}", "--config.ngram_n=1",
        "--config.ngram_dims=65536"])
  docs = [" ".join(FILLER[3 * k:3 * k + 25] + ([HIDDEN[k]] if k % 2 else [])) for k in range(10)]
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
  out = tmp_path / "out"
  main([f"--input={tmp_path / 'in' / '*.jsonl'}", f"--out={out}", "--steps=classify",
        f"--config.classify.classifier={tmp_path / 'clf'}"])
  kept = [json.loads(x)["text"] for x in (out / "input" / "d.jsonl").read_text().splitlines()]
  assert kept == docs[1::2]
  report = [json.loads(x) for x in (out / "input" / "d.jsonl.report.jsonl").read_text().splitlines()[:-1]]
  assert [(r["record"], r["step"], r["reason"]) for r in report] == [(k, "classify", "low_score") for k in (0, 2, 4, 6, 8)]
  assert all(r["score"] < 2.5 for r in report)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["total"]["removed"] == {"read": 0, "classify": 5} and (out / "scores.png").stat().st_size > 5_000

"""The embedded corpus: built once, from real offline text, with exercises whose answers check out."""

import json
import math
import os
import sysconfig
from fractions import Fraction

import pytest

from phi4_jax.data import corpus, synthetic


def _records(root, name):
  with open(os.path.join(root, f"{name}.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_build_is_idempotent_and_a_few_megabytes(data_cache):
  root = corpus.build(data_cache)
  manifest = os.path.join(root, "manifest.json")
  mtime = os.stat(manifest).st_mtime_ns
  assert corpus.build(data_cache) == root and os.stat(manifest).st_mtime_ns == mtime
  files = json.load(open(manifest))["files"]
  assert set(files) == {"web", "web_rewrites", "synthetic", "code", "acquired", "long"}
  assert all(f["docs"] > 0 for f in files.values())
  assert 2e6 < sum(os.path.getsize(os.path.join(root, f"{n}.jsonl")) for n in files) < 8e6
  for name, f in files.items():
    assert f["bytes"] <= corpus.BUDGET_BYTES[name]


def test_stand_ins_are_real_offline_text(data_cache):
  root = corpus.build(data_cache)
  web = _records(root, "web")
  stdlib = sysconfig.get_paths()["stdlib"]
  # Standard-library text only (installing a package must not change the corpus): every line of a
  # `web` page is a line of its module's source (a docstring's, or a documented name).
  assert all("site-packages" not in r["path"] and not r["path"].startswith("..") for r in web)
  for r in web[:10]:
    with open(os.path.join(stdlib, r["path"]), encoding="utf-8") as f:
      source_lines = {line.strip() for line in f.read().splitlines()}
    assert all(line.strip() in source_lines or any(line.strip() in s for s in source_lines)
               for line in r["text"].splitlines()[2:] if line.strip()), r["name"]
    assert len(r["documents"]) >= 1 and r["text"].startswith(r["name"] + "\n\n")
  names = {r["name"] for r in web}
  assert all(r["name"] in names and r["text"].startswith(f"Q: What is {r['name']}?")
             for r in _records(root, "web_rewrites"))
  for name in ("code", "long"):
    for r in _records(root, name)[:5]:
      with open(os.path.join(stdlib, r["path"]), encoding="utf-8", errors="replace") as f:
        assert f.read() == r["text"]
  assert any(r["title"] == "assert" for r in _records(root, "acquired"))  # a pydoc topic


def _expected(topic, p):
  """Each topic's answer computed independently from its parameters."""
  F = Fraction
  if topic == "arithmetic":
    return [p["a"] + p["b"] * p["c"] - p["d"]]
  if topic == "linear equation":
    return [F(p["c"] - p["b"], p["a"])]
  if topic == "linear system":
    det = p["a1"] * p["b2"] - p["a2"] * p["b1"]
    return [F(p["c1"] * p["b2"] - p["c2"] * p["b1"], det), F(p["a1"] * p["c2"] - p["a2"] * p["c1"], det)]
  if topic == "unit conversion":
    return [F(p["value"]) * F(p["factor"])]
  if topic == "percentage":
    return [F(p["p"] * p["n"], 100)]
  if topic == "fractions":
    return [F(p["a"], p["b"]) + F(p["c"], p["d"])]
  if topic == "greatest common divisor":
    return [math.gcd(p["x"], p["y"])]
  if topic == "quadratic equation":
    disc = math.isqrt(p["p"] ** 2 - 4 * p["q"])
    return sorted([F(-p["p"] - disc, 2), F(-p["p"] + disc, 2)])
  if topic == "arithmetic series":
    return [sum(p["a"] + i * p["d"] for i in range(p["n"]))]
  if topic == "rates":
    return [p["v"] * F(p["t"])]
  if topic == "modular arithmetic":
    return [pow(p["a"], p["k"], p["m"])]
  if topic == "geometry":
    return [F(p["b"] * p["h"], 2)]
  raise AssertionError(topic)


def test_synthetic_answers_are_correct_and_checkable(data_cache):
  records = _records(corpus.build(data_cache), "synthetic")
  assert {r["topic"] for r in records} == set(synthetic.TOPICS)
  for r in records:
    assert synthetic.numbers(r["answer"]) == _expected(r["topic"], r["params"]), r
    assert r["text"].endswith(f"Final answer: {r['answer']}") and r["question"] in r["text"]
    assert synthetic.check_answer(r["answer"], f"So the result is {r['answer']}.")
  assert synthetic.exercise(7) == synthetic.exercise(7) != synthetic.exercise(7, seed=1)


@pytest.mark.parametrize("expected,given,ok", [
    ("42", "The answer is 42.", True), ("42", "41", False), ("x = 3, y = -2", "x=3 and y=-2", True),
    ("x = 3, y = -2", "y = -2, x = 3", False), ("3/4", "0.75", True), ("499.5 km", "499.5", True),
    ("7", "", False)])
def test_check_answer(expected, given, ok):
  assert synthetic.check_answer(expected, given) is ok


def test_a_failed_build_leaves_no_partial_corpus(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus, "_web", lambda stdlib: [{"text": "w " * 300, "name": "a", "documents": ["f"]}])
  monkeypatch.setattr(corpus, "_stdlib_files", lambda: [("a.py", "print(1)\n")])
  monkeypatch.setattr(corpus, "_synthetic", lambda budget: [{"text": "1 + 1 = 2"}])
  real_take, calls = corpus._take, []

  def take(records, budget):
    calls.append(1)
    if len(calls) == 4:  # three sources written, then the disk fills
      raise OSError(28, "No space left on device")
    return real_take(records, budget)

  monkeypatch.setattr(corpus, "_take", take)
  with pytest.raises(OSError, match=rf"building the embedded corpus into {tmp_path}/corpus/v\d+: "
                     "No space left"):
    corpus.build(str(tmp_path))
  assert os.listdir(tmp_path / "corpus") == []
  monkeypatch.setattr(corpus, "_take", real_take)
  root = corpus.build(str(tmp_path))
  assert _records(root, "web")[0]["text"] == "w " * 300 and os.listdir(tmp_path / "corpus") == [f"v{corpus.VERSION}"]

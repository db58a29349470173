"""Quality classifiers from annotations (phi4_jax/curate): the annotator (rule judge and endpoint,
resumable), the n-gram and frozen-embedding classifiers recovering hidden rules, save/load, and the
topic keep rates."""

import json
import os
import random

import numpy as np
import pytest

from phi4_jax.curate import annotate, classifier, topics

FILLER = [a + b + c for a in ("ba", "ko", "mi", "tu", "re", "sa") for b in ("lo", "ne", "vi", "da", "pu")
          for c in ("r", "n", "s", "t")]  # 120 made-up words
HIDDEN = ("quartz", "lagoon", "cipher", "meadow", "falcon", "harbor", "ember", "tundra", "violet", "summit")


def hidden_rule_annotations(n: int, seed: int = 0) -> list[dict]:
  """Documents of filler words; half hold one or two words of HIDDEN, the hidden rule's label 4 (else 1)."""
  rng, out = random.Random(seed), []
  for i in range(n):
    words = rng.choices(FILLER, k=rng.randint(20, 40))
    if i % 2:
      for _ in range(rng.randint(1, 2)):
        words.insert(rng.randrange(len(words)), rng.choice(HIDDEN))
    out.append({"id": f"doc{i}", "text": " ".join(words), "educational_value": 4 if i % 2 else 1})
  return out


def test_ngram_classifier_recovers_a_hidden_rule_and_round_trips(tmp_path, capsys):
  records = hidden_rule_annotations(600)
  # the default word 1-2 grams (those in 5+ training documents), and words alone: the rule is one of
  # words, and in documents of words in random order every bigram is noise
  bigrams = classifier.train(records, classifier.FIELDS.config(ngram_dims=2 ** 16), str(tmp_path / "bigrams"))
  assert bigrams["at_threshold"]["f1"] >= 0.9, bigrams
  assert "threshold    acc   prec    rec     f1" in capsys.readouterr().out
  settings = classifier.FIELDS.config(ngram_dims=2 ** 16, ngram_n=1)
  metrics = classifier.train(records, settings, str(tmp_path / "clf"), progress=False)
  assert metrics["at_threshold"]["f1"] >= 0.95 and metrics["thresholds"]["2"]["f1"] >= 0.95, metrics
  with open(tmp_path / "clf" / "metrics.json") as f:
    assert json.load(f) == json.loads(json.dumps(metrics))
  # (e) the loaded classifier scores the held-out documents as the trained one did
  loaded = classifier.load(str(tmp_path / "clf"))
  _, held = classifier.split(records, settings.heldout, settings.seed)
  scores = loaded.score([records[i]["text"] for i in held])
  again = classifier.evaluate(scores, np.array([records[i]["educational_value"] for i in held], np.float32), None, 3)
  assert again["thresholds"] == metrics["thresholds"] and again["mse"] == pytest.approx(metrics["mse"], rel=1e-5)
  assert list(loaded.predict(["quartz " + FILLER[0], FILLER[1] + " " + FILLER[2]])) == [True, False]


def test_embed_classifier_separates_two_token_distributions(tiny_hf_dir, tmp_path):
  rng, records = random.Random(1), []
  for i in range(160):
    if i % 2:  # arithmetic: digits and signs
      text = " ".join(f"{rng.randint(0, 99)} {rng.choice('+-*/')} {rng.randint(0, 99)} =" for _ in range(6))
    else:  # prose of made-up words
      text = " ".join(rng.choices(FILLER, k=20))
    records.append({"id": f"e{i}", "text": text, "reasoning": 5 if i % 2 else 0})
  settings = classifier.FIELDS.config(kind="embed", model=tiny_hf_dir, label="reasoning", layer=1, max_tokens=32,
                                      epochs=30, heldout=0.25)
  metrics = classifier.train(records, settings, str(tmp_path / "clf"), progress=False)
  assert metrics["at_threshold"]["f1"] >= 0.9, metrics
  with open(tmp_path / "clf" / "classifier.json") as f:
    config = json.load(f)
  assert config["model"]["hf_dir"] == os.path.realpath(tiny_hf_dir) and config["settings"]["layer"] == 1
  loaded = classifier.load(str(tmp_path / "clf"))
  _, held = classifier.split(records, settings.heldout, settings.seed)
  again = classifier.evaluate(loaded.score([records[i]["text"] for i in held]),
                              np.array([records[i]["reasoning"] for i in held], np.float32), None, 3)
  assert again["thresholds"] == metrics["thresholds"]


TEXTBOOK = ("A prime number is defined as a whole number greater than 1 whose only divisors are 1 and itself. "
            "For example, 7 is prime because no number between 2 and 6 divides it. Step 1: check 2, and 7 = 2 * 3 + 1. "
            "Step 2: check 3, and 7 = 3 * 2 + 1. Therefore 7 is prime, since every check leaves a remainder. "
            "Hence a number is prime when it has no divisor up to its square root, which means we test few numbers.")
BOILERPLATE = "Home\nShop\nClick here to subscribe\nPrivacy policy\nAll rights reserved"


def documents(n: int) -> list[dict]:
  rng = random.Random(2)
  pool = [TEXTBOOK, BOILERPLATE, "The king of the empire fought a war in the ancient century; his poem survived.",
          "An equation of physics: the force on a mass is F = m * a, because momentum changes."]
  return [{"id": f"d{i:03d}", "text": rng.choice(pool) + f" ({i})"} for i in range(n)]


def test_rule_judge_annotations_are_deterministic_and_resumable(tmp_path, monkeypatch):
  assert annotate.rule_judge(TEXTBOOK)["educational_value"] >= 4 and annotate.rule_judge(TEXTBOOK)["reasoning"] >= 4
  assert annotate.rule_judge(BOILERPLATE) == {"educational_value": 0, "reasoning": 0}
  docs, settings = documents(40), annotate.FIELDS.config(sample=30, docs_per_round=8)
  first = annotate.annotate(docs, "rule", str(tmp_path / "a"), settings, progress=None)
  assert first["sample"] == 30 and first["annotated"] == 30 and first["unparsable"] == 0
  paths = annotate.paths(str(tmp_path / "a"))
  wanted = {k: open(paths[k], "rb").read() for k in ("annotations", "summary")}
  rows = [json.loads(line) for line in wanted["annotations"].splitlines()]
  assert set(rows[0]) == {"id", "text", "educational_value", "reasoning", "topic", "judge", "rubric_version"}
  assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # (input order)
  # a kill mid-append: the log cut inside a line, the outputs not yet written
  log = open(paths["log"], "rb").read()
  cut = log.index(b"\n", len(log) // 2) - 5
  with open(paths["log"], "wb") as f:
    f.write(log[:cut])
  os.remove(paths["annotations"])
  os.remove(paths["summary"])
  judged, rule = [], annotate.rule_judge
  monkeypatch.setattr(annotate, "rule_judge", lambda text: judged.append(text) or rule(text))
  annotate.annotate(docs, "rule", str(tmp_path / "a"), settings, progress=None)
  assert len(judged) == 30 - log[:cut].count(b"\n")  # only the documents not logged whole
  assert {k: open(paths[k], "rb").read() for k in wanted} == wanted
  monkeypatch.undo()
  annotate.annotate(docs, "rule", str(tmp_path / "b"), settings, progress=None)
  assert open(annotate.paths(str(tmp_path / "b"))["annotations"], "rb").read() == wanted["annotations"]


def test_endpoint_judge_retries_then_counts_unparsable(tmp_path, openai_server):
  def reply(body):
    text = body["messages"][0]["content"]
    if "zzfirst" in text:
      return "educational_value: 4\nreasoning: 3"
    if "zzsecond" in text:  # unparsable when greedy, parsable once resampled
      return "A fine page." if body["temperature"] == 0 else "Educational value: 2\nreasoning: 1/5"
    return "educational_value: 7\nreasoning: 1"  # out of range: never parses
  openai_server.reply = reply
  docs = [{"id": k, "text": f"document {k}"} for k in ("zzfirst", "zzsecond", "zzthird")]
  spec = f"http://127.0.0.1:{openai_server.server_address[1]}/v1,model=judge"
  summary = annotate.annotate(docs, spec, str(tmp_path / "a"), annotate.FIELDS.config(retries=2), progress=None)
  assert summary["annotated"] == 2 and summary["unparsable"] == 1 and summary["retried"] == 2
  assert summary["judge"]["model"] == "judge"
  assert len(openai_server.requests) == 1 + 2 + 3
  assert [b["temperature"] for b, _ in openai_server.requests].count(0.7) == 3
  rows = [json.loads(line) for line in open(tmp_path / "a" / "annotations.jsonl")]
  assert [(r["id"], r["educational_value"], r["reasoning"]) for r in rows] == [("zzfirst", 4, 3), ("zzsecond", 2, 1)]
  log = [json.loads(line) for line in open(tmp_path / "a" / "log" / "annotate.jsonl")]
  assert log[2]["scores"] is None and log[2]["attempts"] == 3 and "7" in log[2]["reply"]


def test_keep_rates_restore_a_starved_topic():
  # stem keeps 60 of 100, other 20 of 100, humanities 5 of 80; humanities should be 20% of what is kept.
  # Kept total M = 60 + 20 + 0.2 M  ->  M = 100: humanities keeps 20, i.e. 15 of its 75 under the
  # threshold: rate 15 / 75 = 0.2; the others keep what passed (rate 0).
  counts = {"stem": (100, 60), "other": (100, 20), "humanities": (80, 5)}
  assert topics.keep_rates(counts, {"humanities": 0.2}) == pytest.approx({"stem": 0, "other": 0, "humanities": 0.2})
  # too few documents to reach the share: all of them; a topic already above its share: none extra
  assert topics.keep_rates({**counts, "humanities": (10, 5)}, {"humanities": 0.2})["humanities"] == 1.0
  assert topics.keep_rates({**counts, "humanities": (80, 30)}, {"humanities": 0.2})["humanities"] == 0.0
  # the draw by id restores the share at scale, the same in every run
  ids = [f"h{i}" for i in range(8000)] + [f"s{i}" for i in range(10000)] + [f"o{i}" for i in range(10000)]
  tops = ["humanities"] * 8000 + ["stem"] * 10000 + ["other"] * 10000
  passed = [i < 500 for i in range(8000)] + [i < 6000 for i in range(10000)] + [i < 2000 for i in range(10000)]
  rates = topics.keep_rates(topics.counts(tops, passed), {"humanities": 0.2})
  keep = topics.kept(ids, tops, passed, rates)
  share = keep[:8000].sum() / keep.sum()
  assert share == pytest.approx(0.2, abs=0.01) and (topics.kept(ids, tops, passed, rates) == keep).all()


def test_topic_classifier_from_rule_annotations(tmp_path):
  rng, docs = random.Random(3), []
  stem, humanities = sorted(topics.STEM), sorted(topics.HUMANITIES)
  for i in range(240):
    words = rng.choices(FILLER, k=20) + rng.choices((stem, humanities, FILLER)[i % 3], k=4)
    rng.shuffle(words)
    docs.append({"id": f"t{i}", "text": " ".join(words)})
  annotate.annotate(docs, "rule", str(tmp_path / "a"), annotate.FIELDS.config(), progress=None)
  settings = classifier.FIELDS.config(label="topic", ngram_dims=2 ** 14, ngram_n=1, min_count=2)
  metrics = classifier.train(str(tmp_path / "a" / "annotations.jsonl"), settings, str(tmp_path / "t"), progress=False)
  assert metrics["task"] == "classes" and metrics["macro_f1"] >= 0.9, metrics
  assert list(classifier.load(str(tmp_path / "t")).predict(["the poem of the king", "the theorem and its proof"])) == [
      "humanities", "stem"]

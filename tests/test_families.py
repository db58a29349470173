"""The embedded families' splits: the held-out sets are the generators' plain draws, and no split
trained on or searched holds a held-out question or a document decontam calls contaminated."""

import collections
import json
import os

import pytest

from phi4_jax.data import corpus, decontam, families, synthetic
from phi4_jax.eval import answers, choice
from phi4_jax.posttrain import stages

# Each set alone: an index of both allow-lists at least the n-grams either alone does (common_items
# counts over more items), so it flags no document that neither finds.
BENCHMARKS = ("embedded:exercises", "embedded:parity")


def _norm(text):
  return " ".join(decontam.words(text))


def _synthetic_records(cache):
  with open(os.path.join(corpus.build(cache), "synthetic.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _training_documents(cache) -> dict[str, list[str]]:
  """Every embedded document trained on or searched, by source, as decontam reads it."""
  docs = {name: [decontam.document_text(r if name.startswith("dpo") else r["messages"]) for r in records]
          for name, records in corpus.posttrain_sources().items()
          if name != "dpo_parity_heldout"}  # (evaluation only: the held-out parity questions' pairs)
  docs["synthetic"] = [r["text"] for r in _synthetic_records(cache)]
  for spec in stages.EMBEDDED:  # 1b searches 4,000 corpus:mixed questions
    count = 4000 if spec == "corpus:mixed" else 2000
    docs[spec] = [decontam.item_text(q) for q in stages.questions(spec, count)]
  return docs


def test_held_out_sets_are_the_generators_plain_draws():
  """The evaluation sets are the generators' plain draws (exercise seed 6, parity seed 7): an
  exercise scores comparably across runs; only the training splits are redrawn."""
  assert answers.read_items("embedded:exercises", ()) == [synthetic.exercise(i, 6) for i in range(256)]
  assert answers.read_items("embedded:parity", ()) == [synthetic.parity_question(i, 7) for i in range(256)]
  assert [choice.embedded_item(i)["question"] for i in range(256)] == [
      synthetic.exercise(100_000 + i, 6)["question"] for i in range(256)]
  with pytest.raises(ValueError, match=r"exercises/eval: a held-out split has 256 items, not item 256"):
    answers.read_items("embedded:exercises", (), limit=257)


def test_no_split_trained_on_or_searched_holds_a_held_out_question(data_cache):
  held_out = {_norm(it["question"]) for name in answers.EMBEDDED for it in answers.read_items(name, ())}
  held_out |= {_norm(choice.embedded_item(i)["question"]) for i in range(256)}
  assert len(held_out) > 500
  questions = {spec: [q["question"] for q in stages.questions(spec, 4000)] for spec in stages.EMBEDDED}
  questions["synthetic"] = [r["question"] for r in _synthetic_records(data_cache)]
  for name, records in corpus.posttrain_sources().items():
    questions[name] = [m["content"].removeprefix("Next one: ") for r in records for m in r["messages"]
                       if m["role"] == "user"]
  found = {name: sum(_norm(q) in held_out for q in qs) for name, qs in questions.items()}
  # (dpo_parity_heldout scores DPO on the held-out parity questions themselves: no stage trains on it)
  assert found == {**dict.fromkeys(questions, 0), "dpo_parity_heldout": 100}
  # nor a question of the pairs the recipe scores DPO on
  heldout = {_norm(r["messages"][0]["content"]) for r in corpus.posttrain_sources()["dpo_pairs_heldout"]}
  trained = {k: v for k, v in questions.items()
             if k not in ("dpo_pairs_heldout", "dpo_parity_heldout", "corpus:parity")}
  found = {name: sum(_norm(q) in heldout for q in qs) for name, qs in trained.items()}
  assert found == dict.fromkeys(trained, 0)


@pytest.mark.parametrize("benchmarks", BENCHMARKS)
def test_decontam_finds_no_contaminated_training_document(data_cache, benchmarks):
  index = decontam.Index.build(decontam.benchmark_items(benchmarks), [], decontam.Settings().common_items)
  verdicts = collections.Counter()
  for name, texts in _training_documents(data_cache).items():
    for start in range(0, len(texts), 1024):  # (batched: the decontam stage's own call)
      for found in index.verdicts(texts[start:start + 1024], decontam.Settings()):
        verdicts[name, found and found["verdict"]] += 1
  assert not [k for k in verdicts if k[1] == "contaminated"], verdicts
  assert sum(verdicts.values()) > 10_000


def test_the_old_draws_were_contaminated_and_redraws_keep_each_topic(data_cache):
  """Issue #23's count: pretraining's synthetic exercises drawn without the registry (seed 0,
  indices 0-1324) have 408 documents contaminated by answers' held-out exercises."""
  items = [(f"x/{i}", decontam.item_text(r))
           for i, r in enumerate(answers.read_items("embedded:exercises", ()))]
  index = decontam.Index.build(items, [], 5)
  old = [synthetic.exercise(i, 0) for i in range(1325)]
  assert sum((index.verdict(e["text"], decontam.Settings()) or {}).get("verdict") == "contaminated"
             for e in old) == 408
  new = _synthetic_records(data_cache)
  redrawn = [i for i, r in enumerate(new) if r != synthetic.exercise(i, 0)]
  assert 400 <= len(redrawn) < len(new) / 2
  assert [r["topic"] for r in new] == [synthetic.exercise(i, 0)["topic"] for i in range(len(new))]
  assert [families.item("exercises", "pretrain", i) for i in redrawn[:3]] == [new[i] for i in redrawn[:3]]

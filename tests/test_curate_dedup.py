"""Exact and MinHash dedup: normalised exact duplicates, the planted set's recall and false
positives under the default settings, singletons, batch-independent signatures, components on a
hand-built graph, determinism, and the LSH candidate probability against an empirical estimate."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phi4_jax.curate import dedup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings(**overrides):
  return dedup.FIELDS.config(**overrides)


def test_fields_declared_with_rules_and_help():
  config = settings()
  dedup.FIELDS.check(config, "dedup", complete=True)
  assert set(dedup.FIELDS.help) == set(config) == set(dedup.FIELDS.rules)
  with pytest.raises(ValueError, match="dedup.rows"):
    dedup.dedup([("a", "x")], settings(rows=0))


def test_exact_duplicates_differing_in_case_punctuation_and_spacing_collapse():
  texts = ["The cat sat on the mat.", "the CAT   sat, on the mat!", "The cat\n\tsat on-the mat",
           "A dog ran across the park."]
  assert dedup.exact_key(texts[0]) == dedup.exact_key(texts[1]) == dedup.exact_key(texts[2])
  assert dedup.exact_key(texts[0]) != dedup.exact_key(texts[3])
  docs = [(f"d{i}", t) for i, t in enumerate(texts)]
  assert dedup.dedup(docs, settings(fuzzy=False)) == [0, 0, 0, 3]
  assert dedup.dedup(docs, settings(exact=False, fuzzy=False)) == [0, 1, 2, 3]
  # without the exact pass the fuzzy one still joins them: their signatures are equal
  assert dedup.dedup(docs, settings(exact=False)) == [0, 0, 0, 3]


@pytest.fixture(scope="module")
def planted_run():
  docs, truth = dedup.planted(60, np.random.default_rng(7), singletons=200)
  return docs, truth, dedup.dedup(docs)


def test_planted_set_recall_false_positives_and_first_kept(planted_run):
  docs, truth, kept_for = planted_run
  metrics = dedup.pair_metrics(kept_for, truth)
  assert metrics["recall"] >= 0.95 and metrics["false_positive_rate"] <= 0.01, metrics
  for i, k in enumerate(kept_for):
    assert kept_for[k] == k and k <= i  # the kept document is its cluster's first in order
  assert dedup.pair_metrics(truth, truth) == {"recall": 1.0, "false_positive_rate": 0.0,
                                              "true_pairs": metrics["true_pairs"],
                                              "joined_pairs": metrics["true_pairs"], "false_pairs": 0}


def test_planted_set_keeps_one_document_per_cluster(planted_run):
  docs, truth, kept_for = planted_run
  first = {}
  for i, t in enumerate(truth):
    first.setdefault(t, i)
  kept = set(kept_for)
  assert set(first.values()) <= kept  # every true cluster's first document is kept
  assert all(truth[k] == t for k, t in zip(kept_for, truth))  # nothing removed for an unrelated document
  assert len(kept) - len(first) <= 3  # and nothing else, but for a few missed 20%-edit copies (of 60)


def test_singletons_all_kept():
  docs, truth = dedup.planted(0, np.random.default_rng(3), singletons=300)
  assert dedup.dedup(docs) == list(range(300))
  assert dedup.dedup([]) == []
  assert dedup.dedup([("a", ""), ("b", "  ?! "), ("c", "words")]) == [0, 0, 2]  # no word: exact only
  assert dedup.dedup([("a", ""), ("b", "  ?! ")], settings(exact=False)) == [0, 1]


def test_signature_independent_of_batch_composition(monkeypatch):
  docs, _ = dedup.planted(4, np.random.default_rng(5), singletons=4, words=50)
  texts = [t for _, t in docs] + ["", "one", "two words", "x " * 4000]  # short, empty and long texts
  config = settings()
  alone = np.stack([dedup.signature(t, config) for t in texts])
  assert alone.dtype == np.uint32 and alone.shape == (len(texts), config.bands * config.rows)
  np.testing.assert_array_equal(dedup.signatures(texts, config), alone)
  np.testing.assert_array_equal(dedup.signatures(texts[::-1], config), alone[::-1])
  monkeypatch.setattr(dedup, "_TEXT_CHUNK", 500)  # several groups hashed apart
  np.testing.assert_array_equal(dedup.signatures(texts, config), alone)
  assert (alone[len(docs)] == dedup.EMPTY).all()
  assert (dedup.signature("One!", config) == alone[len(docs) + 1]).all()  # normalised first
  keys = dedup.band_keys(alone[0], config)
  assert len(keys) == config.bands and all(len(k) == 4 * config.rows for k in keys)


def test_vectorised_hashes_match_a_per_shingle_reference():
  """The prefix-sum shingle hashes and the chunked minimum (a text longer than a chunk) equal a plain
  per-shingle computation."""
  config = settings()
  long_text = " ".join(f"w{i}" for i in range(3 * dedup._ROW_CHUNK))
  texts = ["Alpha beta, gamma delta epsilon.", "one two", "", long_text]
  hashes, counts = dedup._shingle_hashes([dedup.normalise(t) for t in texts], config.shingle_words)
  assert counts.tolist() == [3, 1, 0, 3 * dedup._ROW_CHUNK - 2]
  mask = (1 << 64) - 1

  def reference(gram: str) -> int:
    x = sum(byte * pow(dedup._BASE, j, 1 << 64) for j, byte in enumerate(gram.encode())) & mask
    for shift, mult in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53), (33, None)):
      x ^= x >> shift
      x = x * mult & mask if mult else x
    return x

  grams = ["alpha beta gamma", "beta gamma delta", "gamma delta epsilon", "one two"]
  assert hashes[:4].tolist() == [reference(g) for g in grams]
  a, b = dedup.family(config)
  start = counts[:3].sum()
  expected = ((np.multiply.outer(hashes[start:], a) + b).min(axis=0) >> np.uint64(32)).astype(np.uint32)
  np.testing.assert_array_equal(dedup.signature(long_text, config), expected)


def test_components_on_a_hand_built_graph():
  pairs = [(5, 3), (3, 8), (1, 2), (9, 7), (7, 4), (8, 9)]  # {3,4,5,7,8,9}, {1,2}; 0 and 6 alone
  assert dedup.components(10, pairs).tolist() == [0, 1, 1, 3, 3, 3, 6, 3, 3, 3]
  assert dedup.components(3, []).tolist() == [0, 1, 2]
  rng = np.random.default_rng(0)
  edges = rng.integers(0, 200, size=(150, 2))
  roots = dedup.components(200, edges)
  labels = list(range(200))  # a slow reference: relabel until stable
  for _ in range(200):
    for a, b in edges:
      labels[a] = labels[b] = min(labels[a], labels[b])
  assert roots.tolist() == labels


def test_deterministic_across_runs():
  docs, _ = dedup.planted(10, np.random.default_rng(11), singletons=20)
  again, _ = dedup.planted(10, np.random.default_rng(11), singletons=20)
  assert docs == again
  text = "The quick brown fox jumps over the lazy dog"
  assert dedup.signature(text, settings())[:4].tolist() == [202318729, 908978306, 54503268, 194085874]
  assert not np.array_equal(dedup.signature(text, settings(seed=2)), dedup.signature(text, settings()))
  script = ("import json, sys; from phi4_jax.curate import dedup; docs = json.load(sys.stdin); "
            "print(json.dumps(dedup.dedup([tuple(d) for d in docs])))")
  env = dict(os.environ, PYTHONHASHSEED="12345")  # another process, another str hash
  out = subprocess.run([sys.executable, "-c", script], input=json.dumps(docs), capture_output=True, text=True,
                       env=env, check=True, cwd=ROOT)
  assert json.loads(out.stdout) == dedup.dedup(docs)


def test_candidate_probability_matches_the_formula():
  """Pairs of 1-word shingle sets of known Jaccard: the fraction sharing a band key vs
  1-(1-J^r)^b, and the fraction of equal minhashes vs J."""
  config = settings(shingle_words=1, bands=4, rows=4, seed=3)
  for shared, size in ((60, 100), (70, 100), (82, 100)):
    jaccard = shared / (2 * size - shared)
    texts = []
    for p in range(400):
      common = [f"p{p}c{k}" for k in range(shared)]
      texts += [" ".join(common + [f"p{p}a{k}" for k in range(size - shared)]),
                " ".join(common + [f"p{p}b{k}" for k in range(size - shared)])]
    sigs = dedup.signatures(texts, config)
    holders = dedup.first_holders(sigs, config)
    candidate = (holders[1::2] == np.arange(0, len(texts), 2)[:, None]).any(axis=1).mean()
    expected = 1 - (1 - jaccard ** config.rows) ** config.bands
    assert abs(candidate - expected) < 0.08, (jaccard, candidate, expected)
    assert abs((sigs[0::2] == sigs[1::2]).mean() - jaccard) < 0.03, jaccard

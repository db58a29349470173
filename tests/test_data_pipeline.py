"""The grain pipeline end to end on the embedded corpus: shares, determinism, sharding, resume."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from phi4_jax import configs
from phi4_jax.data import config as data_config
from phi4_jax.data import make_train_iterator, measure, planner, progress_from_state
from phi4_jax.data.sources import open_source
from phi4_jax.data.order import EpochOrder
from phi4_jax.tokenizer import Phi4Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("tokens", "segment_ids", "positions", "loss_mask", "source_ids")


def _preset(spec, cache):
  c = configs.load(os.path.join(REPO, spec))
  c.data.cache_dir = cache
  return c


def _small(cache, **data):
  """Two corpus sources, short rows: cheap enough to run many times."""
  c = _preset("experiments/pretrain.py:test", cache)
  c.seq_len, c.global_batch_size = 128, 2
  c.data = data_config.data({"synthetic": data_config.source("corpus:synthetic", 0.6),
                             "web": data_config.source("corpus:web", 0.4)},
                            cache_dir=cache, docs_per_batch=16, **data)
  return c


def _take(config, n, process_index=0, process_count=1):
  it = make_train_iterator(config, process_index, process_count)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in FIELDS:
      np.testing.assert_array_equal(x[k], y[k])


def test_realized_token_shares_match_table5_over_1m_tokens(data_cache):
  c = _preset("experiments/pretrain.py:test", data_cache)
  it = make_train_iterator(c)
  assert it.source_names == ("acquired", "code", "synthetic", "web", "web_rewrites")
  counts = np.zeros(5, np.int64)
  for _ in range(c.steps):
    b = next(it)
    assert all(b[k].shape == (8, 512) and b[k].dtype == np.int32 for k in FIELDS)
    ids = b["source_ids"][b["loss_mask"] > 0]
    counts += np.bincount(ids, minlength=5)
  assert counts.sum() >= 1_000_000
  table5 = {"web": 0.15, "web_rewrites": 0.15, "synthetic": 0.40, "code": 0.20, "acquired": 0.10}
  for name, count in zip(it.source_names, counts):
    assert abs(count / counts.sum() - table5[name]) < 0.01, name
  progress = it.progress()
  assert [progress["sources"][n]["tokens"] for n in it.source_names] == counts.tolist()
  # documents are far from token-weighted: a document-weighted mix would miss the plan
  docs = {n: s["docs_read"] for n, s in progress["sources"].items()}
  assert docs["synthetic"] / sum(docs.values()) > 0.6
  it.close()


def test_deterministic_for_a_seed(data_cache):
  c = _small(data_cache)
  _assert_same(_take(c, 6), _take(c, 6))
  c.seed = 1
  assert not np.array_equal(_take(c, 1)[0]["tokens"], _take(_small(data_cache), 1)[0]["tokens"])


def test_same_batches_whatever_the_threads_or_worker_processes(data_cache):
  reference = _take(_small(data_cache, read_threads=0, prefetch=0), 12)
  _assert_same(_take(_small(data_cache, read_threads=3, tokenizer_threads=2), 12), reference)
  _assert_same(_take(_small(data_cache, worker_count=2), 12), reference)


def _drain(config, process_index=0, process_count=1):
  it = make_train_iterator(config, process_index, process_count)
  batches = list(it)
  it.close()
  return batches


def _token_counts(batches, source_id):
  return np.bincount(np.concatenate([b["tokens"][b["source_ids"] == source_id] for b in batches]),
                     minlength=Phi4Tokenizer.vocab_size)


def test_two_processes_read_disjoint_rows_that_make_up_the_one_process_batch(data_cache):
  c = _small(data_cache, shards=2)
  c.global_batch_size = 4
  whole = _take(c, 6)  # one process reads both shards
  halves = [_take(c, 6, p, 2) for p in range(2)]
  for b in range(6):
    for k in FIELDS:
      np.testing.assert_array_equal(np.concatenate([halves[0][b][k], halves[1][b][k]]), whole[b][k])
    mine = [{row.tobytes() for row in h[b]["tokens"]} for h in halves]
    assert len(mine[0]) == len(mine[1]) == 2 and not mine[0] & mine[1]


def test_one_shard_per_process_splits_an_epoch_between_processes(data_cache):
  c = _small(data_cache, total_tokens=1.0, epoch_margin=0.0)  # one epoch of each source
  single = _drain(c)
  halves = [_drain(c, p, 2) for p in range(2)]
  assert all(b["tokens"].shape == (1, 128) for h in halves for b in h)
  for source_id in range(2):
    one = _token_counts(single, source_id)
    # counts add up exactly: every token of the epoch read once, by one process or the other
    both = _token_counts(halves[0], source_id) + _token_counts(halves[1], source_id)
    np.testing.assert_array_equal(both, one)
    assert 0 < _token_counts(halves[0], source_id).sum() < one.sum()


def test_an_epoch_of_a_small_source_drops_and_duplicates_nothing(tmp_path):
  rng = np.random.default_rng(0)
  docs = [" ".join(f"w{rng.integers(1000)}" for _ in range(rng.integers(1, 120))) for _ in range(41)]
  (tmp_path / "s.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  c = _preset("experiments/pretrain.py:test", str(tmp_path / "cache"))
  c.seq_len, c.global_batch_size, c.seed = 64, 1, 5
  c.data = data_config.data({"s": data_config.source(f"{tmp_path}/s.jsonl", 1.0)},
                            cache_dir=str(tmp_path / "cache"), total_tokens=1.0, epoch_margin=0.0,
                            docs_per_batch=8)
  rows = [b for b in _drain(c)]
  real = np.concatenate([b["tokens"][0][b["loss_mask"][0] > 0] for b in rows])
  tok = Phi4Tokenizer()
  order = EpochOrder(len(docs), 5, "s")(0, len(docs))
  expected = np.concatenate([tok.encode(docs[i]) + [tok.endoftext_id] for i in order])
  np.testing.assert_array_equal(real, expected)  # in order, nothing dropped or repeated
  assert sorted(order) == list(range(len(docs)))
  assert (real == tok.endoftext_id).sum() == len(docs)


RESTORE = textwrap.dedent("""
    import json, sys
    import grain, ml_collections, numpy as np
    import orbax.checkpoint as ocp
    from phi4_jax.data import make_train_iterator

    if __name__ == "__main__":  # grain's worker processes import this file
      config_json, ckpt, step, out = sys.argv[1:]
      it = make_train_iterator(ml_collections.ConfigDict(json.loads(config_json)))
      mngr = ocp.CheckpointManager(ckpt)
      mngr.restore(int(step), args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))
      progress = it.progress()
      batches = [next(it) for _ in range(20)]
      np.savez(out, **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})
      print(json.dumps(progress))
      it.close()
""")


@pytest.mark.parametrize("workers", [0, 1])
def test_restore_in_a_fresh_process_continues_exactly(data_cache, tmp_path, workers):
  import grain
  import orbax.checkpoint as ocp
  c = _small(data_cache, worker_count=workers)
  it = make_train_iterator(c)
  for _ in range(3):
    next(it)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  progress = it.progress()
  reference = [next(it) for _ in range(20)]
  it.close()
  (tmp_path / "restore.py").write_text(RESTORE)
  run = subprocess.run([sys.executable, str(tmp_path / "restore.py"), c.to_json(),
                        str(tmp_path / "ckpt"), "3", str(tmp_path / "out.npz")],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads(run.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(progress))
  restored = np.load(tmp_path / "out.npz")
  _assert_same([{k: restored[f"{i}_{k}"] for k in FIELDS} for i in range(20)], reference)


def test_midtraining_mixes_nested_replay_with_length_filtered_long_documents(data_cache):
  c = _preset("experiments/midtrain.py:test", data_cache)
  it = make_train_iterator(c)
  names = it.source_names
  assert names[:2] == ("long_full_row", "long_half_row") and names[2] == "replay/acquired"
  counts = np.zeros(len(names), np.int64)
  for _ in range(c.steps):
    b = next(it)
    ids = b["source_ids"]
    counts += np.bincount(ids[b["loss_mask"] > 0], minlength=len(names))
    full_rows = (ids == 0).all(axis=1)
    # documents of >= seq_len tokens: a row holds the end of one and the start of the next at most
    assert (b["segment_ids"][full_rows].max(axis=1, initial=0) <= 2).all()
  expected = {l.name: l.fraction for l in planner.leaves(c.data.sources)}
  for name, count in zip(names, counts):
    assert abs(count / counts.sum() - expected[name]) < 0.01, name
  assert counts[names.index("long_full_row")] / counts.sum() == pytest.approx(0.2, abs=0.01)
  it.close()
  # the length filter, against an independent tokenization of every candidate document
  tok = Phi4Tokenizer()
  leaf = {l.name: l for l in planner.leaves(c.data.sources)}["long_half_row"]
  source = open_source(leaf, data_cache)
  _, records = measure.documents_in_play(leaf, source, data_cache)
  lengths = np.array([len(tok.encode(t)) for t in source.read(range(len(source)))])
  np.testing.assert_array_equal(records, np.flatnonzero((lengths >= 512) & (lengths <= 1023)))


# (raw line, reason it is skipped for, or None for a good document); reasons counted by hand
BAD_LINES = [(b"", "empty"),  # a blank line
             (b" \t ", "empty"),  # whitespace only
             (b'{"text": "broken', "malformed_json"),
             (json.dumps({"body": "no text field"}).encode(), "missing_field"),
             (b'{"text": "bad \xff utf8"}', "invalid_utf8"),
             (b'{"text": "lone \\ud800 surrogate"}', "invalid_utf8"),
             (json.dumps({"text": "  \n "}).encode(), "empty"),
             (b"[1, 2]", "missing_field"),
             (b'{"text": 7}', "missing_field"),
             (b"", "empty")]


def _mixed_file(path, n_good=50, seed=0):
  """Good documents of 3-40 words with BAD_LINES spread among them; returns each line's reason."""
  rng = np.random.default_rng(seed)
  lines = [(json.dumps({"text": " ".join(f"g{i}w{j}" for j in range(rng.integers(3, 40)))}).encode(),
            None) for i in range(n_good)]
  for k, bad in enumerate(BAD_LINES):
    lines.insert(5 * k + 2, bad)
  path.write_bytes(b"\n".join(raw for raw, _ in lines) + b"\n")
  return [reason for _, reason in lines]


@pytest.mark.parametrize("data", [dict(read_threads=3, prefetch=8), dict(worker_count=1)])
def test_progress_counts_the_skips_of_every_batch_produced(tmp_path, caplog, data):
  """At every step, progress()'s skip counts are exactly those (counted by hand) of the document
  batches whose documents have reached the rows so far, and never fewer than the skips logged:
  read-ahead by threads or worker processes does not make them lag."""
  import collections
  import logging
  reasons = _mixed_file(tmp_path / "s.jsonl")
  c = _preset("experiments/pretrain.py:test", str(tmp_path / "cache"))
  c.seq_len, c.global_batch_size, c.seed = 16, 1, 3
  per_batch = 6
  c.data = data_config.data({"s": data_config.source(f"{tmp_path}/s.jsonl", 1.0)},
                            cache_dir=str(tmp_path / "cache"), total_tokens=1.0, epoch_margin=0.0,
                            docs_per_batch=per_batch, **data)
  visits = EpochOrder(len(reasons), 3, "s")(0, len(reasons))
  visit_reasons = [reasons[r] for r in visits]
  # a batch of only bad records would be packed without a document to show it: none here
  assert all(any(r is None for r in visit_reasons[b:b + per_batch])
             for b in range(0, len(visits), per_batch))
  good_visits = [v for v, r in enumerate(visit_reasons) if r is None]
  eot = Phi4Tokenizer().endoftext_id
  it = make_train_iterator(c)
  caplog.clear()
  ended, steps = 0, 0
  with caplog.at_level(logging.WARNING):
    for batch in it:
      steps += 1
      real = batch["tokens"][0][batch["loss_mask"][0] > 0]
      ended += int((real == eot).sum())
      started = ended + int(real[-1] != eot)  # documents begun in the rows so far
      packed = min((good_visits[started - 1] // per_batch + 1) * per_batch, len(visits))
      expected = collections.Counter(r for r in visit_reasons[:packed] if r is not None)
      progress = it.progress()["sources"]["s"]
      assert progress["skipped"] == dict(expected), steps
      assert progress["docs_read"] == packed - sum(expected.values()), steps
      logged = caplog.text.count("source s: skipped ")
      assert logged == sum(progress["skipped"].values()), steps
  assert sum(expected.values()) == len(BAD_LINES) and steps > 20
  assert progress["skipped"] == {"empty": 4, "malformed_json": 1, "missing_field": 3,
                                 "invalid_utf8": 2}
  it.close()


def test_a_state_saved_before_read_counters_restores_the_same_batches(data_cache):
  """Checkpoints written before `read` was added to a source's state restore exactly."""
  c = _small(data_cache)
  it = make_train_iterator(c)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  live = it.progress()
  reference = [next(it) for _ in range(5)]
  it.close()
  for mixer in state["mixers"].values():
    for source in mixer["sources"].values():
      del source["read"]
  old = progress_from_state(state)  # the counts before the batch being packed, as they were
  for name, s in old["sources"].items():
    assert s["docs_read"] <= live["sources"][name]["docs_read"]
    assert s["tokens"] == live["sources"][name]["tokens"]
  restored = make_train_iterator(c)
  restored.set_state(state)
  assert restored.progress() == live  # re-reading the batch being packed counts it again
  _assert_same([next(restored) for _ in range(5)], reference)
  restored.close()

"""DPO data: the three pair forms against hand-built ids, first-fit rows of whole pairs (segment
2j+1 chosen, 2j+2 rejected), malformed pairs counted with file and line, pair ids, mixing, resume."""

import json
import logging
import os

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4_jax import configs
from phi4_jax.data import (PAIR_ROW_DTYPES, PAIR_ROW_FIELDS, PairIterator, PlanError,
                           make_train_iterator, pair_id, split_pair_ids)
from phi4_jax.data import config as data_config
from phi4_jax.data import corpus
from phi4_jax.data.fitpack import FitPackedIterator
from phi4_jax.data.pairs import pair_item
from phi4_jax.posttrain import dpo
from phi4_jax.tokenizer import Phi4Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IM_START, IM_END, IM_SEP = 100264, 100265, 100266
USER, ASSISTANT = 882, 78191
PAD = Phi4Tokenizer.pad_id
enc = Phi4Tokenizer().encode_ordinary


def _seqs(item):
  return [(ids.tolist(), mask.tolist()) for ids, mask in item.seqs]


def test_the_three_forms_by_hand():
  assert (enc("Q:"), enc(" A"), enc(" B")) == ([48, 25], [362], [426])
  text = pair_item({"prompt": "Q:", "chosen": " A", "rejected": " B"}, 100)
  assert _seqs(text) == [([48, 25, 362], [0, 0, 1]), ([48, 25, 426], [0, 0, 1])]  # no template
  assert (enc("hi"), enc("yo"), enc("no")) == ([6151], [16417], [2201])
  conv = pair_item({"messages": [{"role": "user", "content": "hi"}], "chosen": "yo",
                    "rejected": "no"}, 100)
  prompt = [IM_START, USER, IM_SEP, 6151, IM_END, IM_START, ASSISTANT, IM_SEP]
  assert _seqs(conv) == [(prompt + [16417, IM_END], [0] * 8 + [1, 1]),
                         (prompt + [2201, IM_END], [0] * 8 + [1, 1])]
  # an empty reply is the completion <|im_end|> alone (a real, bad answer), as the template ends an
  # empty assistant turn; two empty replies are no preference
  empty = pair_item({"messages": [{"role": "user", "content": "hi"}], "chosen": "yo", "rejected": ""}, 100)
  assert _seqs(empty) == [(prompt + [16417, IM_END], [0] * 8 + [1, 1]), (prompt + [IM_END], [0] * 8 + [1])]
  empty_turn = Phi4Tokenizer().apply_chat_template([{"role": "assistant", "content": ""}], tokenize=True)
  assert empty_turn == [IM_START, ASSISTANT, IM_SEP, IM_END]
  assert pair_item({"messages": [{"role": "user", "content": "hi"}], "chosen": "", "rejected": ""},
                   100) == "same_completion"
  assert pair_item({"prompt": "Q:", "chosen": " A", "rejected": ""}, 100) == "empty_completion"  # (no end)
  # token ids are used as they are: [32, 33] decodes to "AB", which encodes to other ids
  assert enc(Phi4Tokenizer().decode([32, 33])) != [32, 33]
  ids = pair_item({"prompt_ids": [100264, 32, 33], "chosen_ids": [100265], "rejected_ids": [7, 8]},
                  100)
  assert _seqs(ids) == [([100264, 32, 33, 100265], [0, 0, 0, 1]), ([100264, 32, 33, 7, 8],
                                                                    [0, 0, 0, 1, 1])]
  assert pair_item({"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]}, 5) == "too_long"
  assert pair_item({"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]}, 6) != "too_long"


def _pair_batches(pairs):
  """One fake TokenizeItems batch per list: pair k's chosen ids are 100k + i, rejected 100k + 50 + i."""
  out, k = [], 0
  for batch in pairs:
    seqs = []
    for j, (c, r) in enumerate(batch):
      seqs += [100 * (k + j) + np.arange(c), 100 * (k + j) + 50 + np.arange(r)]
    out.append({"tokens": np.concatenate(seqs).astype(np.int32),
                "loss_mask": np.ones(sum(map(len, seqs)), np.int32),
                "seq_lengths": np.array([len(s) for s in seqs], np.int32),
                "item_ids": np.arange(k, k + len(batch), dtype=np.int64),
                "visits_end": k + len(batch), "skipped": []})
    k += len(batch)
  return out


PAIRS = [[(3, 3), (2, 2)], [(4, 4), (1, 1), (5, 5)]]


def _pair_packer(batches):
  parent = iter(grain.MapDataset.source(batches).to_iter_dataset())
  return FitPackedIterator(parent, "src", 3, 12, PAD, bins=2, kind="pairs", max_items=2)


def test_pair_rows_by_hand():
  rows = list(_pair_packer(_pair_batches(PAIRS)))
  # pairs of 6, 4, 8, 2, 10 tokens into 2 rows of 12 with 2 slots: A takes 6 and 4 (both slots),
  # B takes 8 and 2; then every row is full and 10 opens the next window
  assert len(rows) == 3
  np.testing.assert_array_equal(rows[0]["tokens"], [0, 1, 2, 50, 51, 52, 100, 101, 150, 151, PAD, PAD])
  np.testing.assert_array_equal(rows[0]["segment_ids"], [1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 0, 0])
  np.testing.assert_array_equal(rows[0]["positions"], [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(rows[0]["loss_mask"], [1] * 10 + [0, 0])
  np.testing.assert_array_equal(rows[0]["pair_ids"], [3 * 2**32, 3 * 2**32 + 1])
  np.testing.assert_array_equal(rows[0]["pair_source_ids"], [3, 3])
  np.testing.assert_array_equal(rows[1]["tokens"], [200, 201, 202, 203, 250, 251, 252, 253, 300,
                                                    350, PAD, PAD])
  np.testing.assert_array_equal(rows[1]["segment_ids"], [1] * 4 + [2] * 4 + [3, 4, 0, 0])
  np.testing.assert_array_equal(rows[1]["pair_ids"], [3 * 2**32 + 2, 3 * 2**32 + 3])
  np.testing.assert_array_equal(rows[2]["segment_ids"], [1] * 5 + [2] * 5 + [0, 0])
  np.testing.assert_array_equal(rows[2]["pair_ids"], [3 * 2**32 + 4, -1])
  np.testing.assert_array_equal(rows[2]["pair_source_ids"], [3, -1])
  assert {k: v.dtype for k, v in rows[0].items()} == PAIR_ROW_DTYPES
  assert pair_id(3, 4) == 3 * 2**32 + 4
  np.testing.assert_array_equal(split_pair_ids(rows[2]["pair_ids"]), [[3, -1], [4, -1]])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_pair_rows_restore_mid_window(k):
  reference = list(_pair_packer(_pair_batches(PAIRS)))
  it = _pair_packer(_pair_batches(PAIRS))
  for _ in range(k):
    next(it)
  fresh = _pair_packer(_pair_batches(PAIRS))
  fresh.set_state(json.loads(json.dumps(it.get_state())))
  rest = list(fresh)
  assert len(rest) == 3 - k
  for a, b in zip(rest, reference[k:]):
    for name in PAIR_ROW_FIELDS:
      np.testing.assert_array_equal(a[name], b[name])


GOOD_TEXT = {"prompt": "Q:", "chosen": " A", "rejected": " B"}
GOOD_CONV = {"messages": [{"role": "user", "content": "hi"}], "chosen": "yo", "rejected": "no"}
GOOD_IDS = {"prompt_ids": [100264, 32, 33], "chosen_ids": [100265], "rejected_ids": [7, 8]}
# (line, reason it is skipped for, or None for a good pair)
LINES = [(json.dumps(GOOD_TEXT), None),
         (json.dumps({"prompt": "Q:", "chosen": " A"}), "missing_field"),
         (json.dumps({"prompt": "Q:", "chosen": "", "rejected": " B"}), "empty_completion"),
         (json.dumps({"prompt": "Q:", "chosen": " A", "rejected": " A"}), "same_completion"),
         (json.dumps({"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [100352]}), "bad_ids"),
         (json.dumps({"prompt": "word " * 30, "chosen": " A", "rejected": " B"}), "too_long"),
         (json.dumps({"messages": [{"role": "user"}], "chosen": "a", "rejected": "b"}), "bad_messages"),
         ('{"prompt": "Q', "malformed_json"),
         (json.dumps({"prompt": "", "chosen": " A", "rejected": " B"}), "empty_prompt"),
         (json.dumps(GOOD_CONV), None),
         (json.dumps(GOOD_IDS), None),
         (json.dumps({"prompt_ids": [1], "chosen_ids": [-1], "rejected_ids": [3]}), "bad_ids"),
         (json.dumps({"prompt_ids": [1], "chosen_ids": [5], "rejected_ids": [5]}), "same_completion")]


def _config(tmp_path, sources, seq_len=48, batch=1, **data):
  c = configs.load(os.path.join(REPO, "experiments/pretrain.py:test"))
  c.seq_len, c.global_batch_size = seq_len, batch
  c.data = data_config.data(sources, cache_dir=str(tmp_path / "cache"), docs_per_batch=4,
                            pairs_per_row=2, pack_bins=2, **data)
  return c


def _pairs_in(batches):
  """{pair id: (chosen (ids, mask), rejected (ids, mask))} of every row, checking the layout."""
  out = {}
  for b in batches:
    for row in range(len(b["tokens"])):
      seg, ids = b["segment_ids"][row], b["pair_ids"][row]
      used = int((ids >= 0).sum())
      assert (ids[used:] == -1).all() and (b["pair_source_ids"][row][used:] == -1).all()
      assert seg.max() == 2 * used  # two segments per pair, nothing else
      for j in range(used):
        seqs = []
        for s in (2 * j + 1, 2 * j + 2):
          at = seg == s
          np.testing.assert_array_equal(b["positions"][row][at], np.arange(at.sum()))
          seqs.append((b["tokens"][row][at].tolist(), b["loss_mask"][row][at].tolist()))
        assert int(ids[j]) not in out
        out[int(ids[j])] = tuple(seqs)
      assert (b["loss_mask"][row][seg == 0] == 0).all() and (b["tokens"][row][seg == 0] == PAD).all()
  return out


def test_pairs_rows_and_every_malformed_pair_counted_with_file_and_line(tmp_path, caplog):
  path = tmp_path / "p.jsonl"
  path.write_text("".join(line + "\n" for line, _ in LINES))
  # the token-id form from parquet too (list<int64> columns), used verbatim
  pq.write_table(pa.table({"prompt_ids": [[5, 6], [9]], "chosen_ids": [[7], [1, 2]],
                           "rejected_ids": [[8], [1, 2]]}), tmp_path / "q.parquet")
  c = _config(tmp_path, {"p": data_config.pairs_source(str(path), 0.5),
                         "q": data_config.pairs_source(str(tmp_path / "q.parquet"), 0.5)},
              total_tokens=1.0, epoch_margin=0.0)
  with caplog.at_level(logging.WARNING):
    it = make_train_iterator(c)
    assert isinstance(it, PairIterator) and it.source_names == ("p", "q")
    batches = list(it)
  progress = it.progress()["sources"]
  it.close()
  assert all(b[k].dtype == PAIR_ROW_DTYPES[k] for b in batches for k in PAIR_ROW_FIELDS)
  assert all(b["tokens"].shape == (1, 48) and b["pair_ids"].shape == (1, 2) for b in batches)
  expected = {pair_id(0, 0): _seqs(pair_item(GOOD_TEXT, 48)),
              pair_id(0, 9): _seqs(pair_item(GOOD_CONV, 48)),
              pair_id(0, 10): [([100264, 32, 33, 100265], [0, 0, 0, 1]),
                               ([100264, 32, 33, 7, 8], [0, 0, 0, 1, 1])],
              pair_id(1, 0): [([5, 6, 7], [0, 0, 1]), ([5, 6, 8], [0, 0, 1])]}
  assert {k: list(v) for k, v in _pairs_in(batches).items()} == expected
  assert progress["p"]["skipped"] == {"missing_field": 1, "empty_completion": 1, "same_completion": 2,
                                      "bad_ids": 2, "too_long": 1, "bad_messages": 1,
                                      "malformed_json": 1, "empty_prompt": 1}
  assert progress["p"]["docs_read"] == 3
  assert progress["q"]["skipped"] == {"same_completion": 1} and progress["q"]["docs_read"] == 1
  # one warning per source and reason, naming its first places, none per record
  warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  head = f"pairs source 'p' ({path}): skipped "
  assert sorted(w for w in warnings if w.startswith(head)) == sorted([
      f"{head}2 of its 13 records: bad_ids (token ids not in [0, vocab); first: {path}:5, {path}:12)",
      f"{head}2 of its 13 records: same_completion (identical chosen and rejected; first: {path}:4, {path}:13)",
      f"{head}1 of its 13 records: missing_field (a field missing or of the wrong type; first: {path}:2)",
      f"{head}1 of its 13 records: malformed_json (not JSON; first: {path}:8)",
      f"{head}1 of its 13 records: bad_messages (malformed messages; first: {path}:7)",
      f"{head}1 of its 13 records: too_long (longer than config.seq_len; first: {path}:6)",
      f"{head}1 of its 13 records: empty_prompt (no prompt token; first: {path}:9)",
      f"{head}1 of its 13 records: empty_completion (a completion with no token; first: {path}:3)"])
  assert [w for w in warnings if "source 'q'" in w] == [
      f"pairs source 'q' ({tmp_path}/q.parquet): skipped 1 of its 2 records: same_completion (identical "
      f"chosen and rejected; first: {tmp_path}/q.parquet:row 1)"]
  assert len(warnings) == 9 and all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_source_without_a_usable_pair_fails_at_start_naming_it(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text(LINES[1][0] + "\n" + LINES[3][0] + "\n")
  c = _config(tmp_path, {"bad": data_config.pairs_source(str(path), 1.0)})
  with pytest.raises(PlanError, match=r"config\.data\.sources\.bad: source 'bad' has no pair to "
                     r"train on \(config\.seq_len=48; of its 2 records, skipped: missing_field 1, "
                     r"same_completion 1\)"):
    make_train_iterator(c)


def _conv(chosen, rejected, user="hi"):
  return json.dumps({"messages": [{"role": "user", "content": user}], "chosen": chosen, "rejected": rejected})


def test_a_dpo_source_with_fewer_usable_pairs_than_min_pairs_stops_naming_it(tmp_path, caplog):
  """issue #25: 12 of 13 judge pairs had an empty rejected reply and were skipped with a warning
  each, and one pair trained for 68 epochs. Now an empty reply is <|im_end|>; identical replies are
  no pair; a DPO stage's source with fewer usable pairs than config.dpo.min_pairs stops the stage,
  each source of the mixture checked on its own."""
  judge, other = tmp_path / "judge.jsonl", tmp_path / "other.jsonl"
  # lines 1 and 4 are usable (line 1's rejected reply is empty), 2, 3, 5 and 6 identical replies
  judge.write_text("\n".join([_conv("yo", ""), _conv("", ""), _conv("a", "a"), _conv("yo", "no"),
                              _conv("b", "b"), _conv("c", "c")]) + "\n")
  other.write_text("".join(_conv("yo", "no", f"q{i}") + "\n" for i in range(3)))
  c = _config(tmp_path, {"judge": data_config.pairs_source(str(judge), 0.5),
                         "other": data_config.pairs_source(str(other), 0.5)}, total_tokens=1.0,
              epoch_margin=0.0)
  c.dpo = dpo.dpo_fields(min_pairs=3)
  with pytest.raises(PlanError) as raised, caplog.at_level(logging.WARNING):
    make_train_iterator(c)
  assert str(raised.value) == (
      f"config.data.sources.judge: source 'judge' ({judge}) has 2 usable pairs of its 6 records, fewer "
      "than config.dpo.min_pairs=3 (config.seq_len=48); left out: 4 same_completion (identical chosen and "
      f"rejected; first: {judge}:2, {judge}:3, {judge}:5, ...). Make more pairs, or lower config.dpo.min_pairs")
  assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
      f"pairs source 'judge' ({judge}): skipped 4 of its 6 records: same_completion (identical chosen and "
      f"rejected; first: {judge}:2, {judge}:3, {judge}:5, ...)"]
  c.dpo.min_pairs = 2  # both sources have enough; the empty reply trains as <|im_end|>
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    it = make_train_iterator(c)
  reported = [r.getMessage() for r in caplog.records]
  pairs = _pairs_in(it)
  it.close()
  assert reported == [f"pairs source 'judge' ({judge}): skipped 4 of its 6 records: same_completion (identical "
                      f"chosen and rejected; first: {judge}:2, {judge}:3, {judge}:5, ...)"]  # (from the cache)
  assert set(pairs) == {pair_id(0, 0), pair_id(0, 3), pair_id(1, 0), pair_id(1, 1), pair_id(1, 2)}
  prompt = Phi4Tokenizer().apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                               tokenize=True)
  assert pairs[pair_id(0, 0)][1] == (prompt + [IM_END], [0] * len(prompt) + [1])
  with pytest.raises(ValueError, match=r"config\.dpo\.min_pairs: must be >= 1, got 0"):
    dpo.FIELDS.check({"min_pairs": 0}, "config.dpo")
  c.dpo.min_pairs = 4  # 'other' has 3 pairs: each source is checked on its own
  with pytest.raises(PlanError, match=r"^config\.data\.sources\.judge: .* 2 usable pairs"):
    make_train_iterator(c)
  del c.dpo  # not a DPO stage: any usable pair will do
  make_train_iterator(c).close()


def _dpo(data_cache, **data):
  c = configs.load(os.path.join(REPO, "experiments/pretrain.py:test"))
  c.seq_len, c.global_batch_size, c.steps = 512, 4, 40
  sources = {"train": data_config.pairs_source("corpus:dpo_pairs", 0.7),
             "heldout": data_config.pairs_source("corpus:dpo_pairs_heldout", 0.3)}
  c.data = data_config.data(sources, cache_dir=data_cache, docs_per_batch=16, **data)
  return c


def test_dpo_mixes_by_token_share_and_pair_ids_find_their_records(data_cache):
  c = _dpo(data_cache)
  it = make_train_iterator(c)
  assert it.source_names == ("heldout", "train")
  counts = np.zeros(2, np.int64)
  seen = {}
  for _ in range(c.steps):
    b = next(it)
    assert b["pair_ids"].shape == (4, 4) and b["pair_ids"].dtype == np.int64
    real = (b["segment_ids"] > 0).sum(axis=1)
    counts += np.bincount(b["pair_source_ids"][:, 0], weights=real, minlength=2).astype(np.int64)
    seen.update(_pairs_in([b]))
  for name, count, share in zip(it.source_names, counts, (0.3, 0.7)):
    assert abs(count / counts.sum() - share) < 0.02, name
  assert counts.sum() > 40_000
  progress = it.progress()["sources"]
  assert [progress[n]["tokens"] for n in it.source_names] == counts.tolist()
  it.close()
  root = corpus.build_posttrain(data_cache)
  files = {0: "dpo_pairs_heldout", 1: "dpo_pairs"}
  records = {s: [json.loads(l) for l in open(os.path.join(root, f"{n}.jsonl"))] for s, n in files.items()}
  sources, indices = split_pair_ids(list(seen))
  for pid, s, i in list(zip(seen, sources, indices))[:50]:
    assert [tuple(x) for x in _seqs(pair_item(records[s][i], 512))] == list(seen[pid])


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in PAIR_ROW_FIELDS:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("k", [1, 4])
def test_dpo_state_restores_the_same_next_batches(data_cache, k):
  c = _dpo(data_cache)
  it = make_train_iterator(c)
  for _ in range(k):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  live = it.progress()
  reference = [next(it) for _ in range(8)]
  it.close()
  restored = make_train_iterator(c)
  restored.set_state(state)
  assert restored.progress() == live
  _assert_same([next(restored) for _ in range(8)], reference)
  restored.close()


def _take(config, n, process_index=0, process_count=1):
  it = make_train_iterator(config, process_index, process_count)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def test_dpo_batches_same_with_workers_and_split_between_processes(data_cache):
  reference = _take(_dpo(data_cache, read_threads=0, prefetch=0, shards=2), 4)
  _assert_same(_take(_dpo(data_cache, worker_count=1, shards=2), 4), reference)
  halves = [_take(_dpo(data_cache, shards=2), 4, p, 2) for p in range(2)]
  for b in range(4):
    for k in PAIR_ROW_FIELDS:
      np.testing.assert_array_equal(np.concatenate([halves[0][b][k], halves[1][b][k]]),
                                    reference[b][k])
    assert not set(halves[0][b]["pair_ids"].ravel()) - {-1} & set(halves[1][b]["pair_ids"].ravel())

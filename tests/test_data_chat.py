"""SFT data: the ChatML template on ids with assistant-only masks, whole-conversation packing,
long conversations cut at a turn boundary, bad records counted, mixing and resume."""

import json
import logging
import os

import grain
import numpy as np
import pytest

from phi4_jax import configs
from phi4_jax.data import PlanError, check_config, make_train_iterator, tokenize_conversation
from phi4_jax.data import config as data_config
from phi4_jax.data.chat import conversation_item
from phi4_jax.data.fitpack import FitPackedIterator
from phi4_jax.tokenizer import Phi4Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("tokens", "segment_ids", "positions", "loss_mask", "source_ids")
IM_START, IM_END, IM_SEP = 100264, 100265, 100266  # docs/RECIPE.md's table
SYSTEM, USER, ASSISTANT = 9125, 882, 78191  # encode_ordinary("system"), ("user"), ("assistant")
PAD = Phi4Tokenizer.pad_id
enc = Phi4Tokenizer().encode_ordinary


def _msgs(*turns):
  return [{"role": r, "content": c} for r, c in turns]


def test_tokenize_conversation_against_a_hand_built_template():
  messages = _msgs(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4"),
                   ("user", "And 3+3?"), ("assistant", "6 <|im_end|>"))
  assert [enc("system"), enc("user"), enc("assistant")] == [[SYSTEM], [USER], [ASSISTANT]]
  expected_ids, expected_mask = [], []
  for role_id, content, trained in [(SYSTEM, "Be brief.", 0), (USER, "What is 2+2?", 0),
                                    (ASSISTANT, "4", 1), (USER, "And 3+3?", 0),
                                    (ASSISTANT, "6 <|im_end|>", 1)]:
    body = enc(content)
    expected_ids += [IM_START, role_id, IM_SEP, *body, IM_END]
    expected_mask += [0, 0, 0] + [trained] * (len(body) + 1)  # content and <|im_end|>
  ids, mask = tokenize_conversation(messages)
  assert ids.dtype == mask.dtype == np.int32
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_array_equal(mask, expected_mask)
  # by hand: system 3 + 3 + 1 tokens, user 3 + 7 + 1, so the first assistant turn is ids 18..22:
  # <|im_start|> assistant <|im_sep|> 4 <|im_end|>, of which "4" and <|im_end|> are targets
  np.testing.assert_array_equal(ids[18:23], [IM_START, ASSISTANT, IM_SEP, 19, IM_END])
  np.testing.assert_array_equal(mask[16:24], [0, 0, 0, 0, 0, 1, 1, 0])
  # the tokenizer's own template gives the same ids; special-token text in content stays text
  assert ids.tolist() == Phi4Tokenizer().apply_chat_template(messages, tokenize=True)
  assert (ids == IM_END).sum() == 5 and int(mask.sum()) == 2 + len(enc("6 <|im_end|>")) + 1


@pytest.mark.parametrize("messages,message", [
    ([{"role": "user"}], r"messages\[0\] is missing 'content'"),
    ([{"role": "user", "content": "a"}, {"content": "b"}], r"messages\[1\] is missing 'role'"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] must be a str, got int"),
    ([{"role": None, "content": "a"}], r"messages\[0\] is missing 'role'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
      {"role": "tool", "content": "c"}],
     r"messages\[2\]\['role'\] is 'tool', not one of system, user, assistant"),
    (["hi"], r"messages\[0\] must be a mapping"),
    ("hi", r"messages must be a list"),
])
def test_bad_messages_name_their_index_and_field(messages, message):
  with pytest.raises(ValueError, match=message):
    tokenize_conversation(messages)


def test_a_long_conversation_is_cut_at_a_turn_boundary_or_dropped():
  # turns of 4 + content tokens: system 7, user 5, assistant 5, user 11, assistant 5 = 33
  long = _msgs(("system", "Be brief."), ("user", "hi"), ("assistant", "yo"),
               ("user", "What is 2+2?"), ("assistant", "4"))
  whole = conversation_item(long, 33)
  assert not whole.cut and len(whole.ids) == 33
  cut = conversation_item(long, 32)  # the last turn no longer fits: keep the first three
  assert cut.cut
  np.testing.assert_array_equal(cut.ids, tokenize_conversation(long[:3])[0])
  np.testing.assert_array_equal(cut.loss_mask, [0] * 12 + [0, 0, 0, 1, 1])
  assert len(conversation_item(long, 28).ids) == 17  # a prefix ending in a user turn is not kept
  assert conversation_item(long, 16) == "too_long"  # no prefix ending with an assistant turn fits
  assert conversation_item(long, 32, "drop") == "too_long"
  assert conversation_item(_msgs(("user", "hi"), ("user", "yo")), 100) == "no_assistant"
  assert conversation_item([{"role": "user"}], 100) == "bad_messages"


def _batches(items_per_batch, m=1):
  """Fake TokenizeItems batches: item k's sequences are 100 * k + offsets, masks all ones."""
  out, k = [], 0
  for items in items_per_batch:
    seqs = [np.arange(100 * (k + j), 100 * (k + j) + n, dtype=np.int32)
            for j, sizes in enumerate(items) for n in ([sizes] if m == 1 else sizes)]
    out.append({"tokens": np.concatenate(seqs), "loss_mask": np.ones(sum(map(len, seqs)), np.int32),
                "seq_lengths": np.array([len(s) for s in seqs], np.int32),
                "item_ids": np.arange(k, k + len(items), dtype=np.int64), "visits_end": k + len(items),
                "skipped": []})
    k += len(items)
  return out


def _packer(batches, **kw):
  parent = iter(grain.MapDataset.source(batches).to_iter_dataset())
  args = dict(seq_len=10, pad_id=PAD, bins=2, kind="chat") | kw
  return FitPackedIterator(parent, "src", 3, **args)


SIZES = [[6, 3], [5, 1, 4], [2]]


def test_first_fit_rows_by_hand():
  rows = list(_packer(_batches(SIZES)))
  # sizes 6 3 5 1 4 2 into 2 rows of 10: row A takes 6, 3, then 1; row B 5, then 4; 2 fits
  # neither, so the window closes and 2 starts the next one
  assert len(rows) == 3
  np.testing.assert_array_equal(rows[0]["tokens"], [0, 1, 2, 3, 4, 5, 100, 101, 102, 300])
  np.testing.assert_array_equal(rows[0]["segment_ids"], [1] * 6 + [2] * 3 + [3])
  np.testing.assert_array_equal(rows[0]["positions"], [0, 1, 2, 3, 4, 5, 0, 1, 2, 0])
  np.testing.assert_array_equal(rows[1]["tokens"], [200, 201, 202, 203, 204, 400, 401, 402, 403, PAD])
  np.testing.assert_array_equal(rows[1]["segment_ids"], [1] * 5 + [2] * 4 + [0])
  np.testing.assert_array_equal(rows[1]["positions"], [0, 1, 2, 3, 4, 0, 1, 2, 3, 0])
  np.testing.assert_array_equal(rows[1]["loss_mask"], [1] * 9 + [0])
  np.testing.assert_array_equal(rows[1]["source_ids"], [3] * 9 + [-1])
  np.testing.assert_array_equal(rows[2]["tokens"], [500, 501] + [PAD] * 8)
  assert set(rows[0]) == set(FIELDS) and all(v.dtype == np.int32 for v in rows[0].values())
  assert [r["tokens"] for r in _packer(_batches(SIZES), bins=1)][0][:9].tolist() == [
      0, 1, 2, 3, 4, 5, 100, 101, 102]  # one bin: next fit


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_first_fit_restores_mid_window_exactly(k):
  reference = list(_packer(_batches(SIZES)))
  it = _packer(_batches(SIZES))
  for _ in range(k):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  fresh = _packer(_batches(SIZES))
  fresh.set_state(state)
  rest = list(fresh)
  assert len(rest) == len(reference) - k
  for a, b in zip(rest, reference[k:]):
    for name in FIELDS:
      np.testing.assert_array_equal(a[name], b[name])
  assert fresh.tokens == 21


def _config(tmp_path, sources, seq_len=32, batch=1, **data):
  c = configs.load(os.path.join(REPO, "experiments/pretrain.py:test"))
  c.seq_len, c.global_batch_size = seq_len, batch
  c.data = data_config.data(sources, cache_dir=str(tmp_path / "cache"), docs_per_batch=4, **data)
  return c


GOOD = _msgs(("user", "hi"), ("assistant", "yo"))
LONG = _msgs(("system", "Be brief."), ("user", "hi"), ("assistant", "yo"),
             ("user", "What is 2+2?"), ("assistant", "4"))  # 33 tokens; the first 3 turns: 17
FOUR = _msgs(("user", "one"), ("assistant", "two"), ("user", "three"), ("assistant", "four"))
# (line, reason it is skipped for, or None)
LINES = [(json.dumps({"messages": GOOD}), None),
         (json.dumps({"text": "no messages"}), "missing_field"),
         (json.dumps({"messages": [{"content": "x"}]}), "bad_messages"),  # a message without role
         (json.dumps({"messages": "hi"}), "bad_messages"),  # not a list
         (json.dumps({"messages": _msgs(("user", "x"))}), "no_assistant"),
         ('{"messages": [', "malformed_json"),
         (json.dumps({"messages": LONG}), "cut_long"),  # cut, and trained on
         (json.dumps({"messages": _msgs(("user", "word " * 40), ("assistant", "a"))}), "too_long"),
         (json.dumps({"messages": FOUR}), None),
         (json.dumps({"messages": _msgs(("tool", "x"), ("assistant", "y"))}), "bad_messages")]


def _drain(config):
  it = make_train_iterator(config)
  batches = list(it)
  progress = it.progress()
  it.close()
  return batches, progress


def _segments(batches):
  """(tokens, loss_mask) of every segment of every row, in order."""
  out = []
  for b in batches:
    for row in range(len(b["tokens"])):
      seg = b["segment_ids"][row]
      for s in range(1, seg.max(initial=0) + 1):
        at = seg == s
        np.testing.assert_array_equal(b["positions"][row][at], np.arange(at.sum()))
        out.append((b["tokens"][row][at].tolist(), b["loss_mask"][row][at].tolist()))
  return out


@pytest.mark.parametrize("mode", ["cut", "drop"])
def test_sft_rows_mask_assistant_spans_and_count_bad_records(tmp_path, caplog, mode):
  path = tmp_path / "s.jsonl"
  path.write_text("".join(line + "\n" for line, _ in LINES))
  c = _config(tmp_path, {"s": data_config.chat_source(str(path), 1.0)}, total_tokens=1.0,
              epoch_margin=0.0, long_conversations=mode)
  with caplog.at_level(logging.WARNING):
    batches, progress = _drain(c)
  kept = [GOOD, FOUR] + ([LONG[:3]] if mode == "cut" else [])
  expected = sorted((ids.tolist(), mask.tolist()) for ids, mask in map(tokenize_conversation, kept))
  assert sorted(_segments(batches)) == expected  # each conversation once, whole, in one row
  # by hand: user hi (5 tokens, mask 0), assistant yo: header 0 0 0, then "yo" and <|im_end|>
  assert (tokenize_conversation(GOOD)[1].tolist() ==
          [0, 0, 0, 0, 0] + [0, 0, 0, 1, 1])
  skipped = {"missing_field": 1, "bad_messages": 3, "no_assistant": 1, "malformed_json": 1,
             "too_long": 2 if mode == "drop" else 1}
  if mode == "cut":
    skipped["cut_long"] = 1
  s = progress["sources"]["s"]
  assert s["skipped"] == skipped and s["docs_read"] == len(kept)
  assert s["tokens"] == sum(len(ids) for ids, _ in expected) == 10 + 20 + (17 if mode == "cut" else 0)
  # one warning per reason (and one for the cut conversation), naming its places; none per record
  warnings = [r.getMessage() for r in caplog.records if f"chat source 's' ({path})" in r.getMessage()]
  places = {}
  for line, (_, reason) in enumerate(LINES, start=1):
    if reason:
      places.setdefault("too_long" if reason == "cut_long" and mode == "drop" else reason, []).append(line)
  assert len(warnings) == len(places) == (6 if mode == "cut" else 5)
  for reason, lines in places.items():
    verb = ("kept 1 of its 10 records with a note" if reason == "cut_long"
            else f"skipped {len(lines)} of its 10 records")
    (found,) = [w for w in warnings if f"{verb}: {reason} (" in w]
    assert found.endswith("first: " + ", ".join(f"{path}:{line}" for line in lines) + ")"), found
  assert all(b[k].dtype == np.int32 and b[k].shape == (1, 32) for b in batches for k in FIELDS)
  assert set(batches[0]) == set(FIELDS)


def test_a_source_without_assistant_turns_fails_at_start_naming_it(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text("".join(json.dumps(r) + "\n" for r in [
      {"messages": _msgs(("user", "a"))}, {"nothing": 1},
      {"messages": _msgs(("system", "s"), ("user", "b"))}]))
  good = tmp_path / "good.jsonl"
  good.write_text(json.dumps({"messages": GOOD}) + "\n")
  c = _config(tmp_path, {"bad": data_config.chat_source(str(bad), 0.5),
                         "good": data_config.chat_source(str(good), 0.5)})
  with pytest.raises(PlanError, match=r"config\.data\.sources\.bad: source 'bad' has no "
                     r"conversation with an assistant turn to train on \(config\.seq_len=32; of its "
                     r"3 records, skipped: missing_field 1, no_assistant 2\)"):
    make_train_iterator(c)


def _sft(data_cache, **data):
  c = configs.load(os.path.join(REPO, "experiments/pretrain.py:test"))
  c.seq_len, c.global_batch_size, c.steps = 128, 4, 40
  sources = {"math": data_config.chat_source("corpus:sft_math", 0.6),
             "identity": data_config.chat_source("corpus:sft_identity", 0.2),
             "safety": data_config.chat_source("corpus:sft_safety", 0.2)}
  c.data = data_config.data(sources, cache_dir=data_cache, docs_per_batch=16, **data)
  return c


def test_sft_mixes_by_token_share(data_cache):
  c = _sft(data_cache)
  it = make_train_iterator(c)
  assert it.source_names == ("identity", "math", "safety")
  counts = np.zeros(3, np.int64)
  for _ in range(c.steps):
    b = next(it)
    counts += np.bincount(b["source_ids"][b["segment_ids"] > 0], minlength=3)
    # the loss counts assistant tokens only: each row's targets are its <|im_end|>s' turns
    assert (b["loss_mask"] <= (b["segment_ids"] > 0)).all()
  assert counts.sum() > 15_000
  for name, count, share in zip(it.source_names, counts, (0.2, 0.6, 0.2)):
    assert abs(count / counts.sum() - share) < 0.01, name
  progress = it.progress()["sources"]
  assert [progress[n]["tokens"] for n in it.source_names] == counts.tolist()
  it.close()


def _take(config, n):
  it = make_train_iterator(config)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("k", [1, 5])
def test_sft_state_restores_the_same_next_batches(data_cache, k):
  c = _sft(data_cache)
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


def test_sft_batches_are_the_same_with_worker_processes(data_cache):
  _assert_same(_take(_sft(data_cache, worker_count=1), 6), _take(_sft(data_cache, read_threads=0,
                                                                      prefetch=0), 6))


def _check(sources, **data):
  c = configs.load(os.path.join(REPO, "experiments/pretrain.py:test"))
  c.data = data_config.data(sources, **data)
  check_config(c)


@pytest.mark.parametrize("sources,data,message", [
    ({"a": data_config.chat_source("corpus:sft_math", 0.5), "b": data_config.source("corpus:web", 0.5)},
     {}, r"config\.data\.sources\.b\.format: is '' \(text records\), but config\.data\.sources\.a"
         r"\.format is 'chat' \(chat records\): a stage's sources must all be text, all chat or all pairs"),
    ({"a": data_config.source("corpus:sft_math", 1.0)}, {},
     r"config\.data\.sources\.a\.format: is '', but corpus:sft_math holds chat records: set it to 'chat'"),
    ({"a": data_config.chat_source("corpus:dpo_pairs", 1.0)}, {},
     r"config\.data\.sources\.a\.format: is 'chat', but corpus:dpo_pairs holds pairs records"),
    ({"a": data_config.chat_source("corpus:sft_math", 1.0, text_field="")}, {},
     r"config\.data\.sources\.a\.text_field: is '', but a chat source needs the field"),
    ({"a": data_config.pairs_source("corpus:dpo_pairs", 1.0, text_field="text")}, {},
     r"config\.data\.sources\.a\.text_field: is 'text', but pairs records have fixed fields"),
    ({"a": data_config.chat_source("corpus:sft_math", 1.0)}, {"long_conversations": "trim"},
     r"config\.data\.long_conversations: must be one of cut, drop, got 'trim'"),
    ({"a": data_config.chat_source("corpus:sft_math", 1.0)}, {"pack_bins": 0},
     r"config\.data\.pack_bins: must be >= 1, got 0"),
    ({"a": data_config.pairs_source("corpus:dpo_pairs", 1.0)}, {"pairs_per_row": 0},
     r"config\.data\.pairs_per_row: must be >= 1, got 0"),
    ({"a": data_config.chat_source("corpus:sft_math", 1.0, format="csv")}, {},
     r"config\.data\.sources\.a\.format: unknown format 'csv' \(known: jsonl, jsonl\.gz, parquet, "
     r"arrayrecord; chat, pairs for post-training records"),
])
def test_post_training_fields_are_checked(sources, data, message):
  with pytest.raises(ValueError, match=message):
    _check(sources, **data)


def test_embedded_post_training_defaults_pass_the_check(tmp_path):
  _check(data_config.embedded_sft_sources(), cache_dir=str(tmp_path))
  _check(data_config.embedded_dpo_sources(), cache_dir=str(tmp_path))
  _check(data_config.embedded_dpo_sources(heldout=True), cache_dir=str(tmp_path))
  assert os.listdir(tmp_path) == []  # checked by name, nothing built


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.parquet", "c.arrayrecord"])
def test_chat_records_read_the_same_from_every_file_type(tmp_path, name):
  import gzip
  import pyarrow as pa
  import pyarrow.parquet as pq
  from phi4_jax.data.sources import Record, Skip, Source
  convs = [GOOD, FOUR, None]  # the last record has no messages
  lines = "".join(json.dumps({"messages": m} if m else {"other": 1}) + "\n" for m in convs)
  (tmp_path / "c.jsonl").write_text(lines)
  with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
    f.write(lines)
  pq.write_table(pa.table({"messages": convs}), tmp_path / "c.parquet")
  from array_record.python.array_record_module import ArrayRecordWriter
  w = ArrayRecordWriter(str(tmp_path / "c.arrayrecord"), "group_size:1")
  for line in lines.splitlines():
    w.write(line.encode())
  w.close()
  src = Source("s", [str(tmp_path / name)], "chat", "messages", str(tmp_path / "cache"), "f")
  out = src.read([1, 0, 2])
  assert [r.value for r in out[:2]] == [FOUR, GOOD] and all(isinstance(r, Record) for r in out[:2])
  assert isinstance(out[2], Skip) and out[2].reason == "missing_field"
  assert out[0].where.startswith(str(tmp_path / name))

"""Sources (formats, bad input, glob errors) and the epoch order, on tiny files."""

import gzip
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4_jax import configs
from phi4_jax.data import config as data_config
from phi4_jax.data import make_train_iterator
from phi4_jax.data.order import EpochOrder
from phi4_jax.data.sources import Skip, Source, resolve_globs

DOCS = [f"document {i}: " + "word " * (i % 7 + 1) for i in range(23)]


def _write_all_formats(d):
  lines = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(DOCS))
  (d / "a.jsonl").write_text(lines)
  with gzip.open(d / "a.jsonl.gz", "wt") as f:
    f.write(lines)
  pq.write_table(pa.table({"text": DOCS}), d / "a.parquet", row_group_size=5)
  from array_record.python.array_record_module import ArrayRecordWriter
  w = ArrayRecordWriter(str(d / "a.arrayrecord"), "group_size:1")
  for t in DOCS:
    w.write(json.dumps({"text": t}).encode())
  w.close()


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.parquet", "a.arrayrecord"])
def test_every_format_reads_the_same_documents_by_index(tmp_path, name):
  _write_all_formats(tmp_path)
  src = Source("s", [str(tmp_path / name)], "", "text", str(tmp_path / "cache"), "config.data.sources.s")
  assert len(src) == len(DOCS)
  order = [17, 3, 22, 0, 9, 9]
  assert src.read(order) == [DOCS[i] for i in order]


def test_parquet_row_groups_are_shuffle_blocks(tmp_path):
  _write_all_formats(tmp_path)
  src = Source("s", [str(tmp_path / "a.parquet")], "", "text", str(tmp_path / "c"), "f")
  np.testing.assert_array_equal(src.block_starts(), [0, 5, 10, 15, 20])
  order = EpochOrder(len(src), 0, "s", block_starts=src.block_starts())
  visits = order(0, 23)
  assert sorted(visits) == list(range(23))
  # each row group's rows are visited consecutively
  groups = visits // 5
  assert (np.diff(groups) != 0).sum() == 4


def test_epoch_order_reshuffles_each_epoch_and_is_deterministic():
  order = EpochOrder(100, seed=3, name="web")
  epochs = [order(e * 100, (e + 1) * 100) for e in range(3)]
  for e in epochs:
    assert sorted(e) == list(range(100))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  np.testing.assert_array_equal(EpochOrder(100, seed=3, name="web")(150, 230), order(150, 230))
  assert not np.array_equal(EpochOrder(100, seed=4, name="web")(0, 100), epochs[0])
  # a fractional epoch is a prefix of that epoch's order: the same subset however it is read
  np.testing.assert_array_equal(order(200, 237), epochs[2][:37])
  records = np.array([5, 8, 13, 21])
  assert sorted(EpochOrder(50, 0, "f", records=records)(0, 4)) == [5, 8, 13, 21]


def test_resolve_globs_errors_name_the_field(tmp_path):
  message = r"config\.data\.sources\.web\.globs: glob '.*nothing\*\.jsonl' matches no file"
  with pytest.raises(ValueError, match=message):
    resolve_globs(f"{tmp_path}/nothing*.jsonl", "config.data.sources.web.globs")
  (tmp_path / "a.txt").write_text("hello\n")
  message = r"config\.data\.sources\.web: unknown format '\(none\)' for .*a\.txt"
  with pytest.raises(ValueError, match=message):
    Source("web", [str(tmp_path / "a.txt")], "", "text", str(tmp_path), "config.data.sources.web")
  with pytest.raises(ValueError, match=r"unknown format 'csv'"):
    Source("web", [str(tmp_path / "a.txt")], "csv", "text", str(tmp_path), "config.data.sources.web")


def _bad_file(path):
  lines = [json.dumps({"text": "good one " * 20}).encode(),
           b'{"text": "broken',  # line 2: malformed JSON
           json.dumps({"body": "no text field"}).encode(),  # line 3
           b'{"text": "bad \xff\xfe utf8"}',  # line 4: invalid UTF-8
           json.dumps({"text": "   "}).encode(),  # line 5: empty document
           json.dumps({"text": "good two " * 20}).encode()]
  path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_records_are_skipped(tmp_path):
  _bad_file(tmp_path / "bad.jsonl")
  src = Source("s", [str(tmp_path / "bad.jsonl")], "", "text", str(tmp_path / "c"), "f")
  out = src.read(range(6))
  assert out[0].startswith("good one") and out[5].startswith("good two")
  assert out[1:5] == [Skip("malformed_json", f"{tmp_path}/bad.jsonl:2"),
                      Skip("missing_field", f"{tmp_path}/bad.jsonl:3"),
                      Skip("invalid_utf8", f"{tmp_path}/bad.jsonl:4"),
                      Skip("empty", f"{tmp_path}/bad.jsonl:5")]


def test_run_goes_on_counts_and_reports_bad_records(tmp_path, caplog):
  _bad_file(tmp_path / "bad.jsonl")
  c = configs.load("experiments/pretrain.py:test")
  c.seq_len, c.global_batch_size = 16, 1
  c.data = data_config.data({"s": data_config.source(f"{tmp_path}/bad.jsonl", 1.0)},
                            cache_dir=str(tmp_path / "cache"), total_tokens=1.0, epoch_margin=0.0)
  with caplog.at_level(logging.WARNING):
    it = make_train_iterator(c)
    batches = list(it)
  progress = it.progress()["sources"]["s"]
  assert progress["skipped"] == {"malformed_json": 1, "missing_field": 1, "invalid_utf8": 1, "empty": 1}
  assert progress["docs_read"] == 2
  assert sum(int(b["loss_mask"].sum()) for b in batches) == progress["tokens"] > 40
  for line, reason in [(2, "malformed_json"), (3, "missing_field"), (4, "invalid_utf8"), (5, "empty")]:
    assert f"bad.jsonl:{line} ({reason})" in caplog.text
  it.close()


def test_pipeline_start_errors_name_the_source(tmp_path):
  c = configs.load("experiments/pretrain.py:test")
  c.data = data_config.data({"web": data_config.source(f"{tmp_path}/missing/*.parquet", 1.0)},
                            cache_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"config\.data\.sources\.web\.globs: glob .* matches no file"):
    make_train_iterator(c)
  (tmp_path / "x.csv").write_text("a,b\n")
  c.data.sources.web.globs = f"{tmp_path}/*.csv"
  with pytest.raises(ValueError, match=r"config\.data\.sources\.web\.format: is '' .*x\.csv has "
                     r"none of a known format"):
    make_train_iterator(c)
  c.data.sources.web.globs = "corpus:nope"
  with pytest.raises(ValueError, match=r"embedded corpus has no source 'nope'"):
    make_train_iterator(c)

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
from phi4_jax.train.loop import train

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


def test_blank_lines_are_empty_and_lone_surrogates_invalid_utf8(tmp_path):
  lines = [b"", b"  \t", b'{"text": "lone \\ud800 surrogate"}', b'{"text": "low \\udc00"}',
           b'{"text": "a pair \\ud83d\\ude00 is fine"}', b'{"text": "\\u00e9t\\u00e9"}',
           b'\xef\xbb\xbf{"text": "after a byte order mark"}']
  (tmp_path / "s.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  src = Source("s", [str(tmp_path / "s.jsonl")], "", "text", str(tmp_path / "c"), "f")
  where = f"{tmp_path}/s.jsonl"
  assert src.read(range(7)) == [Skip("empty", f"{where}:1"), Skip("empty", f"{where}:2"),
                                Skip("invalid_utf8", f"{where}:3"),
                                Skip("invalid_utf8", f"{where}:4"),
                                "a pair \U0001F600 is fine", "\u00e9t\u00e9", "after a byte order mark"]


FIELD = "config.data.sources.s"


def _source(path, cache):
  return Source("s", [str(path)], "", "text", str(cache), FIELD)


def _cache_files(cache):
  return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def _gz_lines(n=3000):
  return "".join(json.dumps({"text": f"document {i} " + "word " * 40}) + "\n" for i in range(n)).encode()


def test_a_truncated_or_corrupt_gzip_is_named_and_leaves_no_partial_copy(tmp_path):
  data = gzip.compress(_gz_lines())
  (tmp_path / "t.jsonl.gz").write_bytes(data[:len(data) // 2])
  cache = tmp_path / "cache"
  with pytest.raises(ValueError, match=rf"source 's' \({FIELD}\): cannot read {tmp_path}/t\.jsonl\.gz "
                     r"\(in line \d+ of its text\): EOFError: .*truncated gzip file") as e:
    _source(tmp_path / "t.jsonl.gz", cache)
  assert int(e.value.args[0].split("in line ")[1].split()[0]) > 100  # the decompressed part counted
  assert _cache_files(cache) == []  # the copy was partly written, then removed
  corrupt = bytearray(data)
  corrupt[-8] ^= 0xFF  # the CRC of the trailer
  (tmp_path / "c.jsonl.gz").write_bytes(bytes(corrupt))
  with pytest.raises(ValueError, match=rf"cannot read {tmp_path}/c\.jsonl\.gz: BadGzipFile: CRC"):
    _source(tmp_path / "c.jsonl.gz", cache)
  assert _cache_files(cache) == []


def _parquet_and_arrayrecord(d):
  docs = [f"document {i} " + "word " * 30 for i in range(200)]
  pq.write_table(pa.table({"text": docs}), d / "a.parquet", row_group_size=50)
  from array_record.python.array_record_module import ArrayRecordWriter
  w = ArrayRecordWriter(str(d / "a.arrayrecord"), "group_size:1")
  for t in docs:
    w.write(json.dumps({"text": t}).encode())
  w.close()


@pytest.mark.parametrize("name,message", [
    ("a.parquet", r"ArrowInvalid: .*not a readable parquet file"),
    ("a.arrayrecord", r"RuntimeError.*not a readable ArrayRecord file")])
def test_a_truncated_parquet_or_arrayrecord_is_named_when_opened(tmp_path, name, message):
  _parquet_and_arrayrecord(tmp_path)
  data = (tmp_path / name).read_bytes()
  (tmp_path / name).write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=rf"source 's' \({FIELD}\): cannot read {tmp_path}/{name}: {message}"):
    _source(tmp_path / name, tmp_path / "cache")


@pytest.mark.parametrize("name,where", [("a.parquet", r":row 0 \(row group 0, rows 0\.\.49\)"),
                                        ("a.arrayrecord", r":record \d+")])
def test_corruption_inside_parquet_or_arrayrecord_is_named_when_read(tmp_path, name, where):
  _parquet_and_arrayrecord(tmp_path)
  data = bytearray((tmp_path / name).read_bytes())
  data[200:400] = bytes(b ^ 0xFF for b in data[200:400])  # inside the first row group / chunks
  (tmp_path / name).write_bytes(bytes(data))
  src = _source(tmp_path / name, tmp_path / "cache")  # the footer is intact
  with pytest.raises(ValueError, match=rf"source 's' \({FIELD}\): cannot read {tmp_path}/{name}{where}: "):
    src.read(range(len(src)))


def test_a_file_deleted_or_cut_after_indexing_is_named_with_its_line(tmp_path):
  path = tmp_path / "s.jsonl"
  path.write_bytes(_gz_lines(20))
  src = _source(path, tmp_path / "cache")
  path.write_bytes(_gz_lines(20)[:500])
  with pytest.raises(ValueError, match=rf"cannot read {path}:\d+: EOFError: read \d+ of the line's "
                     r"\d+ bytes .*shorter than when it was indexed"):
    src.read(range(20))
  import pickle
  with pytest.raises(ValueError, match=rf"cannot read {path}: EOFError: it has 500 bytes, \d+ when "
                     "indexed; it changed while the run reads it"):
    pickle.loads(pickle.dumps(src)).read([0])  # as in a grain worker process
  path.unlink()
  with pytest.raises(ValueError, match=rf"source 's' \({FIELD}\): cannot read {path}: "
                     r"FileNotFoundError: .*it was indexed when the run started"):
    src.read([3])


def test_an_unreadable_file_is_named_when_opened_even_with_a_cached_index(tmp_path, monkeypatch):
  import builtins
  import os
  path = tmp_path / "s.jsonl"
  path.write_bytes(_gz_lines(20))
  _source(path, tmp_path / "cache")  # indexes it (cached)
  real_open, real_os_open = builtins.open, os.open

  def denied(name):
    if str(name) == str(path):
      raise PermissionError(13, "Permission denied", str(name))

  monkeypatch.setattr(builtins, "open", lambda f, *a, **k: denied(f) or real_open(f, *a, **k))
  monkeypatch.setattr(os, "open", lambda f, *a, **k: denied(f) or real_os_open(f, *a, **k))
  with pytest.raises(ValueError, match=rf"source 's' \({FIELD}\): cannot read {path}: "
                     r"PermissionError: \[Errno 13\] Permission denied"):
    _source(path, tmp_path / "cache")


def test_a_missing_parquet_column_names_the_text_field(tmp_path):
  _parquet_and_arrayrecord(tmp_path)
  with pytest.raises(ValueError, match=rf"{FIELD}\.text_field: 'body' is not a column of the "
                     rf"parquet file {tmp_path}/a\.parquet \(columns: \['text'\]\)"):
    Source("s", [str(tmp_path / "a.parquet")], "", "body", str(tmp_path), FIELD)


def test_a_failed_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  from phi4_jax.data import formats, measure
  path = tmp_path / "s.jsonl"
  path.write_bytes(_gz_lines(20))
  cache = tmp_path / "cache"
  real_save = np.save

  def fails_midway(f, array):
    f.write(b"\x93NUMPY partial")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "save", fails_midway)
  with pytest.raises(OSError, match=rf"source 's' \({FIELD}\): cannot write the cache file "
                     rf"{cache}/index/\w+\.npy: OSError: \[Errno 28\] No space left"):
    _source(path, cache)  # the line index
  assert _cache_files(cache) == []
  monkeypatch.setattr(np, "save", real_save)
  src = _source(path, cache)
  monkeypatch.setattr(np, "save", fails_midway)
  with pytest.raises(OSError, match=rf"cannot write the cache file {cache}/measure/\w+-v1\.npy: "
                     "OSError: .*No space left"):
    measure.doc_lengths(src, str(cache))  # the token counts
  assert [f for f in _cache_files(cache) if not f.startswith("index/")] == []
  monkeypatch.setattr(np, "save", real_save)
  # an unreadable cached index is rebuilt, not trusted
  (index,) = (cache / "index").iterdir()
  index.write_bytes(b"garbage")
  assert _source(path, cache).read([19]) == [json.loads(_gz_lines(20).splitlines()[19])["text"]]
  assert formats.load_npy(str(index)) is not None


def test_building_the_train_iterator_names_a_truncated_gzip(tmp_path):
  data = gzip.compress(_gz_lines())
  (tmp_path / "web.jsonl.gz").write_bytes(data[:len(data) // 2])
  c = configs.load("experiments/pretrain.py:test")
  c.data = data_config.data({"web": data_config.source(f"{tmp_path}/*.jsonl.gz", 1.0,
                                                       unique_tokens=1e6)},
                            cache_dir=str(tmp_path / "cache"))
  with pytest.raises(ValueError, match=r"source 'web' \(config\.data\.sources\.web\): cannot read "
                     rf"{tmp_path}/web\.jsonl\.gz \(in line \d+ of its text\): EOFError"):
    make_train_iterator(c)
  assert _cache_files(tmp_path / "cache") == []
  with pytest.raises(ValueError, match=r"cannot read .*web\.jsonl\.gz"):  # through a training run:
    train(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing written into its workdir


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_deleted_after_the_iterator_is_built_is_named_at_its_read(tmp_path, workers):
  (tmp_path / "s.jsonl").write_bytes(_gz_lines(300))
  c = configs.load("experiments/pretrain.py:test")
  c.seq_len, c.global_batch_size = 16, 1
  c.data = data_config.data({"s": data_config.source(f"{tmp_path}/s.jsonl", 1.0, unique_tokens=1e4)},
                            cache_dir=str(tmp_path / "cache"), docs_per_batch=4,
                            worker_count=workers)
  it = make_train_iterator(c)
  (tmp_path / "s.jsonl").unlink()
  with pytest.raises(ValueError, match=rf"source 's' \({FIELD}\): cannot read {tmp_path}/s\.jsonl: "
                     r"FileNotFoundError"):
    for _ in range(5):
      next(it)
  it.close()

"""Packing: rows, segments, positions and the mid-batch checkpoint, against hand-built arrays."""

import grain
import numpy as np
import pytest

from phi4_jax.data.packing import PAD_SOURCE_ID, PackedRowsIterator, RowPacker

PAD = 99


def _mask(segment_ids):
  """Attention mask from segment ids: causal, same segment, no padding."""
  s = np.asarray(segment_ids)
  return (s[:, None] == s[None, :]) & (s[:, None] > 0) & np.tri(len(s), dtype=bool)


def test_rows_of_three_documents_by_hand():
  packer = RowPacker(seq_len=6, source_id=3, pad_id=PAD)
  packer.add(np.array([10, 11, 12, 20, 21, 30, 31, 32, 33], np.int32), np.array([3, 2, 4]))
  first, second = packer.pop(), packer.pop(allow_short=True)
  assert packer.pop(allow_short=True) is None
  np.testing.assert_array_equal(first["tokens"], [10, 11, 12, 20, 21, 30])
  np.testing.assert_array_equal(first["segment_ids"], [1, 1, 1, 2, 2, 3])
  np.testing.assert_array_equal(first["positions"], [0, 1, 2, 0, 1, 0])
  np.testing.assert_array_equal(first["loss_mask"], [1] * 6)
  np.testing.assert_array_equal(first["source_ids"], [3] * 6)
  # The third document continues at the start of the next row, with positions restarting.
  np.testing.assert_array_equal(second["tokens"], [31, 32, 33, PAD, PAD, PAD])
  np.testing.assert_array_equal(second["segment_ids"], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(second["positions"], [0, 1, 2, 0, 0, 0])
  np.testing.assert_array_equal(second["loss_mask"], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(second["source_ids"], [3, 3, 3] + [PAD_SOURCE_ID] * 3)
  hand = np.array([[1, 0, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [0, 0, 0, 1, 0, 0],
                   [0, 0, 0, 1, 1, 0],
                   [0, 0, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(_mask(first["segment_ids"]), hand)
  assert all(v.dtype == np.int32 for v in first.values())


def _batches(lengths_per_batch, seed=0):
  """Fake tokenized batches: document k's tokens are 1000 * k + position, so order is checkable."""
  out, doc = [], 0
  for lengths in lengths_per_batch:
    tokens = np.concatenate([1000 * (doc + i) + np.arange(n) for i, n in enumerate(lengths)])
    out.append({"tokens": tokens.astype(np.int32), "lengths": np.array(lengths, np.int32),
                "visits_end": doc + len(lengths), "skipped": []})
    doc += len(lengths)
  return out


def _rows(batches, seq_len=8):
  parent = iter(grain.MapDataset.source(batches).to_iter_dataset())
  return PackedRowsIterator(parent, "src", 0, seq_len, PAD)


LENGTHS = [[3, 9, 1], [2], [20, 4, 4], [1, 1, 1], [7]]


def test_stream_keeps_every_token_in_order():
  rows = list(_rows(_batches(LENGTHS)))
  real = np.concatenate([r["tokens"][r["loss_mask"] > 0] for r in rows])
  expected = np.concatenate([b["tokens"] for b in _batches(LENGTHS)])
  np.testing.assert_array_equal(real, expected)
  for r in rows:
    n = r["loss_mask"].sum()
    tok, seg, pos = r["tokens"][:n], r["segment_ids"][:n], r["positions"][:n]
    starts = np.flatnonzero(np.diff(seg, prepend=0))
    assert np.all(np.diff(seg) >= 0) and seg[0] == 1 and set(np.diff(seg)) <= {0, 1}
    assert np.all(pos[starts] == 0)  # positions restart at each segment
    # within a segment: one document, consecutive token offsets
    for a, b in zip(starts, list(starts[1:]) + [n]):
      assert len(set(tok[a:b] // 1000)) == 1 and np.all(np.diff(tok[a:b]) == 1)
      np.testing.assert_array_equal(pos[a:b], np.arange(b - a))
  assert sum(r["loss_mask"].sum() for r in rows) == sum(map(sum, LENGTHS))
  assert all(r["loss_mask"].all() for r in rows[:-1])  # only the last row is padded


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 7])
def test_restore_mid_batch_continues_exactly(k):
  reference = list(_rows(_batches(LENGTHS)))
  it = _rows(_batches(LENGTHS))
  for _ in range(k):
    next(it)
  state = it.get_state()
  fresh = _rows(_batches(LENGTHS))
  fresh.set_state(state)
  rest = list(fresh)
  assert len(rest) == len(reference) - k
  for a, b in zip(rest, reference[k:]):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  assert fresh.tokens == sum(map(sum, LENGTHS))

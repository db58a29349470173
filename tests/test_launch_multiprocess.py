"""Training under launch/local.py: 2 processes x 2 CPU devices against 1 process x 4 devices.

The test preset trains with its parameters and optimizer state sharded fsdp-wise over all four
devices of both processes, checkpoints, and resumes; every logged loss must equal the
single-process run of the same config. A probe builds the data iterator in each process exactly as
the training loop does, and checks that the processes read disjoint rows which together are the
single-process global batch.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from launch import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def _train_args(data_cache):
  return ["--config=experiments/pretrain.py:test", f"--config.steps={STEPS}", "--config.seq_len=64",
          "--config.global_batch_size=8", "--config.mesh_shape=(1, 4, 1)", "--config.log_every=1",
          "--config.checkpoint_every=2", "--config.optimizer.warmup_steps=1",
          "--config.tensorboard=false", "--config.data.shards=2",
          f"--config.data.cache_dir={data_cache}"]


@pytest.fixture()
def repo_on_path(monkeypatch):
  # No persistent XLA cache here: a cached executable can order its collectives differently from
  # a fresh compile in the other process, and gloo then deadlocks.
  monkeypatch.setenv("PYTHONPATH", REPO)


def _losses(workdir):
  """{step: [loss of every metrics.jsonl row for that step]}."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      rows.setdefault(row["step"], []).append(row["loss"])
  return rows


def _launch(args, out):
  status = local.launch(args, num_processes=2, devices_per_process=2, timeout_s=240, out=out)
  assert status == 0, out.getvalue()[-5000:]


def test_two_processes_train_resume_and_match_one_process(tmp_path, data_cache, repo_on_path):
  args = _train_args(data_cache)
  multi, single = tmp_path / "multi", tmp_path / "single"
  reference_log = open(tmp_path / "reference.log", "w")
  reference = subprocess.Popen([sys.executable, "-m", "phi4_jax.main", *args, f"--workdir={single}"],
                               env=local.process_env(4), cwd=REPO, stdout=reference_log,
                               stderr=subprocess.STDOUT)  # runs alongside, to save time
  try:
    out = io.StringIO()
    _launch([*args, f"--workdir={multi}"], out)
    assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
    shutil.rmtree(multi / "checkpoints" / "4")  # as if the job had died after step 3
    resumed = io.StringIO()
    _launch([*args, f"--workdir={multi}"], resumed)
    assert f"resumed {multi} from step 2" in resumed.getvalue()
    assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
    reference.wait(timeout=240)
  finally:
    reference.kill()
    reference_log.close()
  assert reference.returncode == 0, (tmp_path / "reference.log").read_text()[-5000:]

  expected = {step: losses[0] for step, losses in _losses(single).items()}
  got = _losses(multi)
  assert sorted(expected) == sorted(got) == list(range(1, STEPS + 1))
  # Once each: the resumed run dropped the first run's rows of steps 3 and 4 before redoing them.
  assert [len(got[s]) for s in sorted(got)] == [1, 1, 1, 1]
  for step, losses in got.items():
    for loss in losses:
      assert abs(loss - expected[step]) < 1e-5, (step, losses, expected[step])
  assert len({round(v, 4) for v in expected.values()}) == STEPS  # the loss moves: a real check


# Each process builds its data iterator as phi4_jax/train/loop.py does and saves its first batches.
DATA_PROBE = r'''
import argparse, numpy as np
from phi4_jax import configs, distributed
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--cache")
p.add_argument("--coordinator_address"); p.add_argument("--num_processes", type=int)
p.add_argument("--process_id", type=int)
a = p.parse_args()
distributed.initialize(a.coordinator_address, a.num_processes, a.process_id)
import jax
from phi4_jax import data as data_lib
config = configs.load("experiments/pretrain.py:test", {"seq_len": 64, "global_batch_size": 8,
                      "data.shards": 2, "data.cache_dir": a.cache})
it = data_lib.make_train_iterator(config, jax.process_index(), jax.process_count())
np.save(f"{a.out}/tokens_{jax.process_index()}.npy", np.stack([next(it)["tokens"] for _ in range(3)]))
'''


def test_processes_read_disjoint_shares_of_the_global_batch(tmp_path, data_cache, monkeypatch):
  from phi4_jax import configs
  from phi4_jax.data import make_train_iterator
  (tmp_path / "data_probe.py").write_text(DATA_PROBE)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), REPO]))
  out = io.StringIO()
  status = local.launch([f"--out={tmp_path}", f"--cache={data_cache}"], 2, 1, module="data_probe",
                        timeout_s=120, out=out)
  assert status == 0, out.getvalue()[-5000:]
  parts = [np.load(tmp_path / f"tokens_{i}.npy") for i in range(2)]  # [batches, 4 rows, 64]
  config = configs.load(os.path.join(REPO, "experiments/pretrain.py:test"),
                        {"seq_len": 64, "global_batch_size": 8, "data.shards": 2,
                         "data.cache_dir": data_cache})
  it = make_train_iterator(config, 0, 1)
  whole = np.stack([next(it)["tokens"] for _ in range(3)])  # [batches, 8 rows, 64]
  for b in range(3):
    mine = [{row.tobytes() for row in part[b]} for part in parts]
    assert len(mine[0]) == len(mine[1]) == 4 and not mine[0] & mine[1]
    np.testing.assert_array_equal(np.concatenate([parts[0][b], parts[1][b]]), whole[b])


# DPO with dpo.precompute_reference in 2 processes, one reference chunk per batch; with --crash,
# process 1 dies after scoring chunk 1 and before saving it (process 0 has saved its own).
REFERENCE_PROBE = r'''
import sys
import jax
from phi4_jax import main
from phi4_jax.posttrain import reference
reference.CHUNK_BATCHES = 1
if "--crash" in sys.argv:
  sys.argv.remove("--crash")
  real_chunk, calls = reference._chunk, []
  def chunk(*args):
    scored = real_chunk(*args)  # (a computation over both processes' rows)
    calls.append(1)
    if len(calls) == 2 and jax.process_index() == 1:
      raise SystemExit("killed after scoring chunk 1, before saving it")
    return scored
  reference._chunk = chunk
main.run()
'''


def test_two_processes_precompute_their_own_reference_chunks_and_agree_on_a_resume(
    tmp_path, data_cache, monkeypatch):
  """Each process scores its own rows of the global batch, so its chunk and table files are named
  by process (two processes writing one `chunk_k.npz` would each read back the other's rows, or a
  file both wrote at once). A kill can leave a chunk saved by one process and not by the other:
  scoring is one computation over both processes' rows, so both score it again (were process 0 to
  skip it, process 1 would wait for it forever). The losses equal one process scoring the
  reference on the fly, a second code path."""
  import jax

  from phi4_jax import hf, model
  cfg = model.ModelConfig.preset("test")
  hf.save(cfg, model.init(cfg, jax.random.key(0)), str(tmp_path / "hf"))
  hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "init"))
  args = ["--config=experiments/dpo.py:test", "--config.steps=3", "--config.log_every=1",
          "--config.tensorboard=false", "--config.data.shards=2", f"--config.init_from={tmp_path / 'init'}",
          f"--config.data.cache_dir={data_cache}", "--config.optimizer.warmup_steps=1"]
  single, multi = tmp_path / "single", tmp_path / "multi"
  single_log = open(tmp_path / "single.log", "w")
  on_the_fly = subprocess.Popen([sys.executable, "-m", "phi4_jax.main", *args, f"--workdir={single}"],
                                env={**local.process_env(4), "PYTHONPATH": REPO}, cwd=REPO,
                                stdout=single_log, stderr=subprocess.STDOUT)  # runs alongside
  try:
    (tmp_path / "reference_probe.py").write_text(REFERENCE_PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), REPO]))
    precompute = [*args, "--config.dpo.precompute_reference=true", f"--workdir={multi}"]
    crashed = io.StringIO()
    # Process 1's own status (1, from SystemExit), not the timeout's 124: a failed process exits at
    # once (distributed.failing_fast) rather than in jax.distributed's shutdown barrier minutes later.
    assert local.launch([*precompute, "--crash"], 2, 2, module="reference_probe", timeout_s=240,
                        out=crashed) == 1, crashed.getvalue()[-3000:]
    on_the_fly.wait(timeout=300)
  finally:
    on_the_fly.kill()
    single_log.close()
  assert on_the_fly.returncode == 0, (tmp_path / "single.log").read_text()[-5000:]
  table_dir = multi / "reference_logprobs"
  assert sorted(os.listdir(table_dir)) == ["process_0.chunk_0.npz", "process_0.chunk_1.npz",
                                           "process_1.chunk_0.npz"], crashed.getvalue()[-3000:]
  ids = [set(np.load(table_dir / f"process_{i}.chunk_0.npz")["ids"]) for i in range(2)]
  assert ids[0] and ids[1] and not ids[0] & ids[1]  # each process's own pairs

  resumed = io.StringIO()
  assert local.launch(precompute, 2, 2, module="reference_probe", timeout_s=240, out=resumed) == 0, \
      resumed.getvalue()[-5000:]
  assert sorted(os.listdir(table_dir)) == ["process_0.npz", "process_1.npz"]
  expected, got = _losses(single), _losses(multi)
  assert sorted(got) == [1, 2, 3] and all(len(v) == 1 for v in got.values())
  np.testing.assert_allclose([got[s][0] for s in (1, 2, 3)], [expected[s][0] for s in (1, 2, 3)],
                             rtol=1e-5)
  assert abs(expected[3][0] - expected[1][0]) > 1e-4  # the loss moves: a real check

"""phi4_jax/sweeps.py (definitions, mixture fractions) and launch/sweep.py with an injected runner:
points, resume, summary, jobs."""

import csv
import json
import math
import os
import textwrap

import pytest

from launch import job as job_lib, slurm, sweep
from phi4_jax import sweeps

BASE = textwrap.dedent('''
    import ml_collections

    def get_config(arg="small"):
      c = ml_collections.ConfigDict()
      c.steps = 4 if arg == "small" else 8
      c.seq_len = 16
      c.optimizer = ml_collections.ConfigDict({"peak_lr": 3e-4})
      src = lambda f: ml_collections.ConfigDict({"fraction": f})
      c.data = ml_collections.ConfigDict({"sources": {
          "web": src(0.3), "synthetic": src(0.4), "code": src(0.2),
          "replay": ml_collections.ConfigDict({"fraction": 0.1, "sources": {
              "synthetic": src(0.5), "web": src(0.5)}})}})
      return c
''')


@pytest.fixture()
def base(tmp_path):
  path = tmp_path / "base.py"
  path.write_text(BASE)
  return f"{path}:small"


class FakeRunner:
  """Stands in for phi4_jax.main: writes metrics.jsonl rows and a `finished` marker."""

  def __init__(self, stop_at: int | None = None):
    self.ran, self.stop_at = [], stop_at

  def __call__(self, job: job_lib.Job) -> int:
    config = job_lib.parse(job)
    if self.stop_at is not None and len(self.ran) == self.stop_at:
      raise KeyboardInterrupt
    self.ran.append(os.path.basename(job.workdir))
    os.makedirs(job.workdir, exist_ok=True)
    with open(os.path.join(job.workdir, "metrics.jsonl"), "w") as f:
      for step in range(1, config.steps + 1):
        loss = 10.0 - step * config.optimizer.peak_lr * 100
        first = {"compile_s": 9.0} if step == 1 else {}  # (as the loop marks a run's first row)
        f.write(json.dumps({"step": step, "loss": loss, "tokens_per_s": 100.0 * step, **first,
                            "loss_per_source": {"web": loss + 1},
                            "data": {"sources": {"web": {"epochs": 0.5 * step}}}}) + "\n")
    with open(os.path.join(job.workdir, "finished"), "w") as f:
      f.write(str(config.steps))
    return 0


def fake_finished(config, workdir):
  marker = os.path.join(workdir, "finished")
  return os.path.exists(marker) and open(marker).read() == str(config.steps)


def test_with_fraction_rebalances_siblings():
  import ml_collections
  config = ml_collections.ConfigDict({"data": {"sources": {
      "web": {"fraction": 0.3}, "synthetic": {"fraction": 0.4}, "code": {"fraction": 0.3},
      "replay": {"fraction": 0.0, "sources": {"synthetic": {"fraction": 0.25}, "web": {"fraction": 0.75}}}}}})
  o = sweeps.with_fraction(config, "synthetic", 0.7)
  assert o["data.sources.synthetic.fraction"] == 0.7
  assert math.isclose(o["data.sources.web.fraction"], 0.3 * 0.3 / 0.6)
  assert math.isclose(o["data.sources.code.fraction"], 0.3 * 0.3 / 0.6)
  assert o["data.sources.replay.fraction"] == 0.0
  assert math.isclose(sum(o.values()), 1.0)
  nested = sweeps.with_fraction(config, "replay/synthetic", 0.5)
  assert nested == {"data.sources.replay.sources.synthetic.fraction": 0.5,
                    "data.sources.replay.sources.web.fraction": 0.5}
  with pytest.raises(KeyError, match="no source 'synth'"):
    sweeps.with_fraction(config, "synth", 0.5)
  with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
    sweeps.with_fraction(config, "web", 1.5)


def test_grid_names_labels_and_overrides():
  points = sweeps.grid(lr=sweeps.axis("optimizer.peak_lr", [1e-3, 3e-3]),
                      mix={"a": {"x.y": 1, "x.z": 2}, "b": {"x.y": 3, "x.z": 4}})
  assert [p.name for p in points] == ["lr=0.001_mix=a", "lr=0.001_mix=b", "lr=0.003_mix=a",
                                      "lr=0.003_mix=b"]
  assert points[3].labels == {"lr": 3e-3, "mix": "b"}
  assert points[3].overrides == {"optimizer.peak_lr": 3e-3, "x.y": 3, "x.z": 4}
  assert [p.name for p in sweeps.listed({"steps": 1}, {"steps": 2})] == ["p0", "p1"]
  with pytest.raises(ValueError, match="several points named"):
    sweeps.Sweep("s", "c.py", sweeps.listed({}) * 2)


def test_flag_values_round_trip(base, tmp_path):
  job = job_lib.make(base, {"steps": 7, "optimizer.peak_lr": 1.5e-3, "seq_len": 32}, "/w")
  config = job_lib.parse(job)
  assert (config.steps, config.optimizer.peak_lr, config.seq_len) == (7, 1.5e-3, 32)
  with pytest.raises(ValueError, match="optimizer.nope"):
    job_lib.parse(job_lib.make(base, {"optimizer.nope": 1}, "/w"))


def test_sweep_runs_resumes_and_summarizes(base, tmp_path):
  root = str(tmp_path / "sweep")
  s = sweeps.Sweep("t", base, sweeps.grid(lr=sweeps.axis("optimizer.peak_lr", [1e-3, 2e-3, 4e-3])),
                  overrides={"steps": 3})
  interrupted = FakeRunner(stop_at=1)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_local(s, root, interrupted, fake_finished, log=lambda _: None)
  assert interrupted.ran == ["lr=0.001"]
  resumed = FakeRunner()
  statuses = sweep.run_local(s, root, resumed, fake_finished, log=lambda _: None)
  assert resumed.ran == ["lr=0.002", "lr=0.004"]  # the finished point is not rerun
  assert statuses == {p.name: "done" for p in s.points}
  again = FakeRunner()
  sweep.run_local(s, root, again, fake_finished, log=lambda _: None)
  assert again.ran == []

  with open(os.path.join(root, "summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["point"] for r in rows] == ["lr=0.001", "lr=0.002", "lr=0.004"]
  for row, lr in zip(rows, [1e-3, 2e-3, 4e-3]):
    assert float(row["final_loss"]) == pytest.approx(10.0 - 3 * lr * 100, abs=1e-12)
    assert float(row["loss/web"]) == pytest.approx(11.0 - 3 * lr * 100, abs=1e-12)
    assert float(row["tokens_per_s"]) == 250.0  # median of steps 2..3, the first is compile time
    assert float(row["epochs/web"]) == 1.5
    assert row["step"] == "3" and row["status"] == "done" and row["lr"] == f"{lr:g}"
  markdown = open(os.path.join(root, "summary.md")).read().splitlines()
  assert len(markdown) == 2 + len(s.points)
  assert markdown[0].startswith("| point | lr | status | step | final_loss | tokens_per_s |")


def test_changed_points_are_refused(base, tmp_path):
  root = str(tmp_path / "sweep")
  sweep.run_local(sweeps.Sweep("t", base, sweeps.listed({"steps": 2})), root, FakeRunner(),
                  fake_finished, log=lambda _: None)
  with pytest.raises(ValueError, match="point p0 .* ran with"):
    sweep.run_local(sweeps.Sweep("t", base, sweeps.listed({"steps": 3})), root, FakeRunner(),
                    fake_finished, log=lambda _: None)


def test_failed_point_is_reported_and_the_rest_run(base, tmp_path):
  runner = FakeRunner()
  calls = []

  def flaky(job):
    calls.append(job.workdir)
    return 3 if len(calls) == 1 else runner(job)

  s = sweeps.Sweep("t", base, sweeps.listed({"steps": 2}, {"steps": 3}))
  statuses = sweep.run_local(s, str(tmp_path / "w"), flaky, fake_finished, log=lambda _: None)
  assert statuses == {"p0": "failed (exit 3)", "p1": "done"}


def test_bad_override_fails_before_running(base, tmp_path):
  runner = FakeRunner()
  s = sweeps.Sweep("t", base, sweeps.listed({"steps": 2}, {"optimizer.peak_rl": 1e-3}))
  with pytest.raises(ValueError, match=r"--config.optimizer.peak_rl: unknown field config.optimizer.peak_rl \(did you mean peak_lr\?\)"):
    sweep.run_local(s, str(tmp_path / "w"), runner, fake_finished, log=lambda _: None)
  assert runner.ran == []


def test_cluster_target_writes_one_job_per_unfinished_point(base, tmp_path, monkeypatch):
  root = str(tmp_path / "shared")
  s = sweeps.Sweep("mix", base, sweeps.grid(lr=sweeps.axis("optimizer.peak_lr", [1e-3, 2e-3])))
  FakeRunner()(sweep.job(s, s.points[0], root))  # the first point finished already
  monkeypatch.setattr(job_lib, "check", lambda job, devices=None: job_lib.parse(job))
  spec = slurm.Spec(nodes=2, gpus_per_node=4, repo_dir=str(tmp_path))
  paths = sweep.emit_jobs(s, root, "slurm", spec, str(tmp_path / "jobs"), is_finished=fake_finished,
                          log=lambda _: None)
  assert [os.path.basename(p) for p in paths] == ["lr=0.002.sbatch"]
  text = open(paths[0]).read()
  assert "#SBATCH --job-name=mix-lr=0.002" in text
  assert f"--workdir={root}/lr=0.002" in text and "--config.optimizer.peak_lr=0.002" in text


def test_failed_submission_exits_1_with_the_message_not_a_usage_error(base, monkeypatch, capsys):
  s = sweeps.Sweep("mix", base, sweeps.grid(lr=sweeps.axis("optimizer.peak_lr", [1e-3])))
  monkeypatch.setattr(sweeps, "load", lambda _: s)

  def failing_submit(*args, **kwargs):
    raise RuntimeError("sbatch (submitting the job) failed with status 1")

  monkeypatch.setattr(sweep, "emit_jobs", failing_submit)
  assert sweep.main(["--sweep=any.py", "--target=slurm", "--submit", "--nodes=1"]) == 1
  err = capsys.readouterr().err
  assert "sbatch (submitting the job) failed with status 1" in err and "usage:" not in err


def test_gke_jobs_get_valid_distinct_names(base, tmp_path, monkeypatch):
  import yaml
  from launch import gke
  s = sweeps.Sweep("synthetic_mix", base, sweeps.grid(lr=sweeps.axis("optimizer.peak_lr", [1e-3, 2e-3])))
  monkeypatch.setattr(job_lib, "check", lambda job, devices=None: job_lib.parse(job))
  paths = sweep.emit_jobs(s, "/gcs/sweeps/mix", "gke", gke.Spec(image="img", gcs_bucket="b"),
                          str(tmp_path / "jobs"), is_finished=fake_finished, log=lambda _: None)
  names = [yaml.safe_load(open(p))["metadata"]["name"] for p in paths]
  assert names == ["synthetic-mix-lr-0-001", "synthetic-mix-lr-0-002"]


def test_finished_needs_every_stage_of_a_recipe_at_its_last_step(tmp_path):
  import ml_collections
  import orbax.checkpoint as ocp
  from phi4_jax.store import checkpoint
  recipe = ml_collections.ConfigDict({"stages": ("pretrain", "midtrain"),
                                      "pretrain": {"steps": 3}, "midtrain": {"steps": 2}})

  def save(stage, step):
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(tmp_path / stage)) as mngr:
      mngr.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave({"step": step})))

  assert not sweep.finished(recipe, str(tmp_path))
  save("pretrain", 3)
  save("midtrain", 1)
  assert not sweep.finished(recipe, str(tmp_path))
  save("midtrain", 2)
  assert sweep.finished(recipe, str(tmp_path))
  assert sweep.metrics_dir(recipe, "W") == os.path.join("W", "midtrain")


def test_a_point_runs_with_the_config_the_sweep_built(base, tmp_path):
  """The sweep's config of a point and phi4_jax.main's parse of the point's flags are one path."""
  s = sweeps.Sweep("t", base, sweeps.listed(
      {"optimizer.peak_lr": 1 / 3, "data.sources.web.fraction": 0.1, "seq_len": 32}),
      overrides={"steps": 2})
  point = s.points[0]
  point_job = sweep.job(s, point, str(tmp_path))
  assert point_job.workdir == str(tmp_path / "p0")
  assert job_lib.parse(point_job).to_dict() == s.point_config(point).to_dict()
  assert s.point_config(point).optimizer.peak_lr == 1 / 3  # repr of a float parses back exactly


def test_experiments_do_not_import_the_launchers():
  import ast
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
  for folder, _, files in os.walk(root):
    for name in (f for f in files if f.endswith(".py")):
      tree = ast.parse(open(os.path.join(folder, name)).read())
      imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
      imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
      assert not [m for m in imported if m.split(".")[0] == "launch"], (name, imported)

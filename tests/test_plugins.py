"""A new data stage and a new objective, written here and registered, run in a recipe with no
change to the package: the stage protocol (recipe/stages.py) and the objective protocol
(train/objectives.py) are the whole interface."""

import json
import os

import ml_collections
import numpy as np
import pytest

from phi4_jax import configs
from phi4_jax.data import config as data_config
from phi4_jax.recipe import runner, stages
from phi4_jax.train import loop, objectives
from phi4_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"log_every": 1, "tensorboard": False, "async_checkpointing": False, "steps": 1,
        "checkpoint_every": 1, "seq_len": 64, "global_batch_size": 8, "mesh_shape": (1, 8, 1)}


class NumberedDocs:
  """A data stage: `docs` numbered text documents in W/docs.jsonl, done once W/done.json exists."""

  makes_model = False
  runs = 0

  def check(self, config, prefix, first, data_ready):
    if config.docs < 1:
      raise ValueError(f"{prefix}.docs: must be >= 1, got {config.docs}")

  def finished(self, config, stage_dir):
    return os.path.exists(os.path.join(stage_dir, "done.json"))

  def run(self, config, stage_dir, flag_prefix):
    NumberedDocs.runs += 1
    os.makedirs(stage_dir, exist_ok=True)
    with open(self.output(config, stage_dir), "w") as f:
      f.writelines(json.dumps({"text": f"Document {i}: " + " ".join(str(i * k) for k in range(40))}) + "\n"
                   for i in range(config.docs))
    with open(os.path.join(stage_dir, "done.json"), "w") as f:
      json.dump({"docs": config.docs}, f)
    return {"stage": config.stage, "docs": config.docs}

  def output(self, config, stage_dir):
    return os.path.join(stage_dir, "docs.jsonl")

  def note(self, config, stage_dir):
    return f"{config.docs} numbered documents" if self.finished(config, stage_dir) else None


class Weighted(objectives.NextToken):
  """An objective: the next-token loss times config.weighted.weight (its own settings group)."""

  name, settings = "weighted", "weighted"

  def check(self, config):
    if config.weighted.weight <= 0:
      raise ValueError(f"config.weighted.weight: must be > 0, got {config.weighted.weight}")

  def loss(self, config, cfg, mesh, num_sources):
    lm = super().loss(config, cfg, mesh, num_sources)

    def weighted(params, batch, extras, weight=config.weighted.weight):
      loss_sum, sums = lm(params, batch, extras)
      return weight * loss_sum, {**sums, "loss_sum": weight * sums["loss_sum"]}
    return weighted

  def summarize(self, sums, steps, source_names):
    return {**super().summarize(sums, steps, source_names), "weighted": True}

  def notes(self, rows):
    return [f"weighted next-token loss over {len(rows)} rows"]


@pytest.fixture(scope="module")
def registered():
  stages.register("numbered_docs", NumberedDocs())
  objectives.register(Weighted())
  yield
  del stages.KINDS["numbered_docs"], objectives.OBJECTIVES["weighted"]


def _training_stage(objective: str, globs: str):
  c = configs.load(os.path.join(ROOT, "experiments/pretrain.py:test"), FAST)
  c.data = data_config.data({"made": data_config.source(globs, 1.0, format="jsonl")})
  c.objective = objective
  if objective == "weighted":
    c.weighted = ml_collections.ConfigDict({"weight": 2.5})
  return c


def _recipe(docs: int = 64):
  c = ml_collections.ConfigDict()
  c.stages = ("make", "train")
  c.make = ml_collections.ConfigDict({"kind": "numbered_docs", "stage": "make", "docs": docs})
  c.train = _training_stage("weighted", "stage:make")
  return c


def test_a_registered_data_stage_and_objective_run_in_a_recipe(registered, tmp_path):
  workdir = str(tmp_path / "w")
  with pytest.raises(ValueError, match=r"stage make: config.make.docs: must be >= 1, got 0"):
    runner.run(_recipe(docs=0), workdir)  # checked before anything runs
  assert not os.path.exists(workdir) and NumberedDocs.runs == 0

  results = runner.run(_recipe(), workdir)
  assert NumberedDocs.runs == 1 and results[0] == {"stage": "make", "docs": 64}
  weighted = read_metrics(os.path.join(workdir, "train"))
  assert weighted[-1]["weighted"] is True and set(weighted[-1]["loss_per_source"]) == {"made"}

  # The same stage under the plain next-token objective, on the stage's file: 2.5 x its loss.
  plain = str(tmp_path / "plain")
  loop.train(_training_stage("lm", os.path.join(workdir, "make", "docs.jsonl")), plain)
  first = read_metrics(plain)[0]
  np.testing.assert_allclose(weighted[0]["loss"], 2.5 * first["loss"], rtol=1e-5)
  np.testing.assert_allclose(weighted[0]["grad_norm"], 2.5 * first["grad_norm"], rtol=1e-4)  # its gradient

  rerun = runner.run(_recipe(), workdir)
  assert [r.get("skipped") for r in rerun] == [True, True] and NumberedDocs.runs == 1


def test_the_report_speaks_the_protocols(registered, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  runner.run(_recipe(docs=16), workdir)
  table = capsys.readouterr().out
  assert "| make | - | - | - | - | 16 numbered documents |" in table
  assert "| 1 | " in table and "weighted next-token loss over 1 rows |" in table  # the objective's note


def test_unknown_kinds_and_objectives_name_the_field(registered, tmp_path):
  c = _recipe()
  c.make.kind = "numbered_doc"
  with pytest.raises(ValueError, match=r"stage make: config.make.kind: 'numbered_doc' is not a stage kind"):
    runner.run(c, str(tmp_path / "a"))
  c = _recipe()
  c.train.objective = "weightd"
  with pytest.raises(ValueError, match=r"config.objective: 'weightd' is not an objective \(known: lm, dpo, weighted\)"):
    runner.run(c, str(tmp_path / "b"))
  c = _recipe()
  c.train.weighted.weight = 0.0
  with pytest.raises(ValueError, match=r"stage train: config.weighted.weight: must be > 0"):
    runner.run(c, str(tmp_path / "c"))
  assert not os.listdir(tmp_path)

"""The mixture planner against Table 5 (docs/RECIPE.md) and hand computations."""

import json
import os
import subprocess
import sys

import pytest

from phi4_jax import configs
from phi4_jax.data import config as data_config
from phi4_jax.data import planner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# docs/RECIPE.md Table 5, written out by hand: source -> epochs at 10T tokens.
TABLE5_EPOCHS = {"web": 1.2, "web_rewrites": 5.2, "synthetic": 13.8, "code": 2.4, "acquired": 1.7}


def _config(sources, total_tokens=1000.0):
  c = configs.load(os.path.join(REPO, "experiments/pretrain.py:test"))
  c.data = data_config.data(sources, total_tokens=total_tokens)
  return c


def test_phi4_14b_preset_reproduces_table5_epochs():
  c = configs.load(os.path.join(REPO, "experiments/pretrain.py:phi4_14b"))
  p = planner.make_plan(c)  # unique tokens are declared: nothing is read
  assert p.total_tokens == pytest.approx(10e12, rel=1e-5)
  assert {s.name: round(s.epochs, 1) for s in p.sources} == TABLE5_EPOCHS
  assert sum(s.tokens for s in p.sources) == pytest.approx(p.total_tokens)


def test_epochs_by_hand_and_budget_from_steps():
  c = _config({"a": data_config.source("x", 0.25, unique_tokens=50.0),
               "b": data_config.source("y", 0.75, unique_tokens=300.0)}, total_tokens=0.0)
  c.steps, c.global_batch_size, c.seq_len = 10, 4, 100  # 4000 tokens
  p = planner.make_plan(c)
  assert [(s.name, s.tokens, s.epochs) for s in p.sources] == [("a", 1000.0, 20.0), ("b", 3000.0, 10.0)]


def test_refuses_epochs_over_max_naming_the_source():
  c = _config({"web": data_config.source("x", 0.5, unique_tokens=100.0, max_epochs=4.0),
               "synthetic": data_config.source("y", 0.5, unique_tokens=100.0, max_epochs=6.0)})
  with pytest.raises(planner.PlanError, match=r"'web'.*5\.00 times.*config\.data\.sources\.web\.max_epochs=4"):
    planner.make_plan(c)


def test_refuses_fractions_not_summing_to_one():
  c = _config({"web": data_config.source("x", 0.5, unique_tokens=1.0),
               "code": data_config.source("y", 0.4, unique_tokens=1.0)})
  message = r"config\.data\.sources: fractions sum to 0\.9.*code=0\.4.*web=0\.5"
  with pytest.raises(planner.PlanError, match=message):
    planner.make_plan(c)


def test_nested_mixture_multiplies_fractions_and_checks_each_level():
  inner = {"web": data_config.source("x", 0.25, unique_tokens=10.0),
           "code": data_config.source("y", 0.75, unique_tokens=10.0)}
  c = _config({"long": data_config.source("z", 0.3, unique_tokens=10.0),
               "replay": data_config.mixture(0.7, inner)})
  assert {l.name: l.fraction for l in planner.leaves(c.data.sources)} == pytest.approx(
      {"long": 0.3, "replay/code": 0.525, "replay/web": 0.175})
  c.data.sources.replay.sources.code.fraction = 0.5
  message = r"config\.data\.sources\.replay\.sources: fractions sum to 0\.75"
  with pytest.raises(planner.PlanError, match=message):
    planner.leaves(c.data.sources)


def test_midtrain_preset_is_30_percent_long_70_percent_replay():
  c = configs.load(os.path.join(REPO, "experiments/midtrain.py:phi4_14b"))
  leaves = {l.name: l for l in planner.leaves(c.data.sources)}
  assert c.seq_len == 16384
  assert leaves["long_half_row"].cfg.min_doc_tokens == 8192
  assert leaves["long_full_row"].cfg.min_doc_tokens == 16384
  assert leaves["long_full_row"].fraction > leaves["long_half_row"].fraction
  assert sum(l.fraction for n, l in leaves.items() if n.startswith("long")) == pytest.approx(0.3)
  assert leaves["replay/synthetic"].fraction == pytest.approx(0.7 * 0.4)
  assert c.steps * c.global_batch_size * c.seq_len == pytest.approx(250e9, rel=1e-3)


def test_plan_command_prints_json_and_table():
  env = {**os.environ, "PYTHONPATH": REPO}
  run = lambda *a: subprocess.run([sys.executable, "-m", "phi4_jax.data.plan",
                                   "--config=experiments/pretrain.py:phi4_14b", *a],
                                  cwd=REPO, env=env, capture_output=True, text=True, check=True)
  out = json.loads(run("--json").stdout)
  assert {s["name"]: round(s["epochs"], 1) for s in out["sources"]} == TABLE5_EPOCHS
  table = run().stdout
  assert "synthetic" in table and "13.8" in table and "290B" in table
  refused = subprocess.run([sys.executable, "-m", "phi4_jax.data.plan",
                            "--config=experiments/pretrain.py:phi4_14b",
                            "--config.data.total_tokens=2e13"],
                           cwd=REPO, env=env, capture_output=True, text=True)
  assert refused.returncode != 0 and "plan refused: source 'acquired'" in refused.stderr

"""A recipe's curate stage: the pipeline's clean copies (equal to `python -m phi4_jax.curate`'s on the
same files) are what the next stage trains on, and a rerun skips it."""

import json
import os
import subprocess
import sys

from phi4_jax.curate.__main__ import main as curate_main
from phi4_jax.data import corpus
from phi4_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = '''
import ml_collections
from phi4_jax import configs
from phi4_jax.curate import stage
def get_config(arg=""):
  c = ml_collections.ConfigDict()
  c.stages = ("curate_web", "pretrain")
  c.curate_web = stage.stage_config("web", "corpus:web", steps="filter,dedup")
  c.pretrain = configs.load("{repo}/experiments/pretrain.py:test")
  c.pretrain.steps, c.pretrain.log_every, c.pretrain.tensorboard = 2, 1, False
  c.pretrain.data.sources.web.globs = "stage:curate_web/web"
  return c
'''


def _run(recipe, workdir, cache):
  env = {**os.environ, "PHI4_JAX_CACHE": cache, "PYTHONPATH": REPO, "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "phi4_jax.main", f"--config={recipe}", f"--workdir={workdir}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_a_curate_stage_feeds_the_next_stage_its_clean_copies(tmp_path, data_cache):
  recipe = tmp_path / "recipe.py"
  recipe.write_text(RECIPE.format(repo=REPO))
  out = _run(recipe, tmp_path / "w", data_cache)
  assert out.returncode == 0, out.stderr[-5000:]
  staged = tmp_path / "w" / "curate_web"
  summary = json.loads((staged / "summary.json").read_text())["total"]
  # The command line on the same file: the same clean copy, byte for byte.
  web = corpus.resolve("corpus:web", data_cache)
  curate_main([f"--input={web}", f"--out={tmp_path / 'cli'}", "--steps=filter,dedup"])
  clean = (staged / "web" / "web.jsonl").read_bytes()
  assert clean == (tmp_path / "cli" / "input" / "web.jsonl").read_bytes()
  kept = clean.decode().splitlines()
  assert 0 < len(kept) == summary["kept"] < summary["docs"] == len(open(web, encoding="utf-8").readlines())
  config = json.loads((tmp_path / "w" / "pretrain" / "config.json").read_text())
  assert config["data"]["sources"]["web"]["globs"] == str(staged / "web" / "web.jsonl")
  assert "web" in read_metrics(tmp_path / "w" / "pretrain")[-1]["loss_per_source"]
  assert f"| curate_web | - | - | - | - | kept {summary['kept']} of {summary['docs']} documents" in out.stdout
  rerun = _run(recipe, tmp_path / "w", data_cache)
  assert rerun.returncode == 0 and rerun.stderr.count("already finished") == 2, rerun.stderr[-3000:]

"""Data stages in a recipe: the model each stage starts from, `stage:<name>` sources, their
checks before anything runs, and a judge stage end to end on a tiny model."""

import json
import os

import pytest

from phi4_jax import configs
from phi4_jax.posttrain import stages
from phi4_jax.recipe import runner as recipe


def test_colab_recipe_links_models_past_data_stages_and_their_pairs(tmp_path, monkeypatch):
  monkeypatch.setattr(recipe.jax, "device_count", lambda: 1)  # the recipe's one device (conftest fakes 8)
  c = configs.load("experiments/recipe.py:colab")
  ready = recipe.link(c, str(tmp_path))
  w = lambda name: os.path.join(str(tmp_path), name)
  assert [c[s].init_from for s in c.stages[1:]] == [w("pretrain"), w("midtrain"), w("sft"), w("sft"),
                                                    w("sft_synth"), w("sft_synth"), w("sft_synth"), w("dpo_pts"),
                                                    w("dpo_pts")]
  # A later stage reads one file of a data stage's folder: stage:<name>/<file>.
  assert c.sft_synth.data.sources.synth.globs == os.path.join(w("synth"), "rejection_sampling.jsonl")
  # The refusal pairs at refusal_share; dpo_pts's PTS pairs the rest, dpo_judge's half judge, half math.
  for stage, fractions in (("dpo_pts", [0.97, 0.03]), ("dpo_judge", [0.485, 0.485, 0.03])):
    sources = c[stage].data.sources
    assert sources.refusal.globs == os.path.join(w("refusal"), "pairs.jsonl")
    assert [sources[s].fraction for s in sources] == pytest.approx(fractions)
  assert c.dpo_pts.data.sources.pts.globs == os.path.join(w("pts"), "pairs.jsonl")
  assert c.dpo_judge.data.sources.judge.globs == os.path.join(w("judge"), "pairs.jsonl")
  assert c.dpo_judge.data.sources.math.globs == "corpus:dpo_pairs"
  assert ready == {**{s: True for s in c.stages}, "sft_synth": False, "dpo_pts": False, "dpo_judge": False}
  share = configs.load("experiments/recipe.py:colab")
  share.refusal_share = 0.05  # (--config.refusal_share=0.05) moves both DPO stages' mixes
  assert share.dpo_judge.data.sources.refusal.fraction == 0.05 and share.dpo_judge.data.sources.math.fraction == 0.475
  assert share.dpo_pts.data.sources.pts.fraction == 0.95
  recipe.check(configs.load("experiments/recipe.py:colab"), str(tmp_path))  # before the pairs exist


def test_a_synth_stage_reads_its_seeds_from_an_earlier_data_stage(tmp_path):
  c = configs.load("experiments/recipe.py:colab")
  c.synth.pipeline.rejection_sampling.seeds = "stage:refusal/sft"  # refusal runs after synth
  with pytest.raises(ValueError, match=r"stage synth: config.synth.pipeline.rejection_sampling.seeds names "
                     r"'stage:refusal/sft', but no data stage 'refusal' runs before it"):
    recipe.link(c, str(tmp_path))
  c = configs.load("experiments/recipe.py:colab")
  c.stages = ("pretrain", "midtrain", "sft", "refusal", "synth", "sft_synth")
  c.synth.pipeline.rejection_sampling.seeds = "stage:refusal/sft"
  ready = recipe.link(c, str(tmp_path))
  assert c.synth.pipeline.rejection_sampling.seeds == os.path.join(str(tmp_path), "refusal", "sft.jsonl")
  assert not ready["synth"] and ready["refusal"]


def test_a_stage_source_must_name_an_earlier_data_stage(tmp_path):
  c = configs.load("experiments/recipe.py:colab")
  c.dpo_pts.data.sources.pts.globs = "stage:judge"  # judge runs after dpo_pts
  with pytest.raises(ValueError, match=r"stage dpo_pts: config.dpo_pts.data.sources.pts.globs names "
                     r"'stage:judge', but no data stage 'judge' runs before it"):
    recipe.link(c, str(tmp_path))


@pytest.mark.parametrize("field, value, message", [
    ("num_questions", 0, r"config.pts.num_questions: must be >= 1 for the embedded corpus:parity"),
    ("questions", "questions.txt", r"config.pts.questions: a .jsonl file or one of corpus:parity"),
    ("settings.p_gap", 0.0, r"config.pts.settings.p_gap: must be in \(0, 1\]"),
    ("settings.num_rollout", 3, r"unknown field config.pts.settings.num_rollout \(did you mean num_rollouts"),
    ("kind", "ptss", r"config.pts.kind: 'ptss' is not a stage kind \(known: train, pts, judge"),
])
def test_data_stage_fields_are_checked_before_the_recipe_starts(tmp_path, monkeypatch, field, value, message):
  monkeypatch.setattr(recipe.jax, "device_count", lambda: 1)
  c = configs.load("experiments/recipe.py:colab")
  node = c.pts
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  with node.unlocked():
    node[leaf] = value
  with pytest.raises(ValueError, match=rf"stage pts: {message}"):
    recipe.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_judge_stage_writes_pairs_and_a_summary_and_is_then_finished(tiny_hf_dir, openai_server, tmp_path):
  # Responses from our sampler (the tiny model's noise) and from an endpoint whose answers
  # alternate right and wrong, judged by rule: each prompt gets a best and a worst.
  answers = iter(["Final answer: odd", "Final answer: even"] * 50)
  openai_server.reply = lambda body: next(answers)
  c = configs.load("experiments/judge.py:test")
  c.init_from = tiny_hf_dir
  c.questions = "corpus:parity"
  c.responders = f"hf:{tiny_hf_dir};http://127.0.0.1:{openai_server.server_address[1]}/v1,model=fake"
  out = str(tmp_path / "judge")
  summary = recipe.run(c, out)[0]
  assert stages.finished(out) and json.load(open(os.path.join(out, stages.SUMMARY))) == {
      k: v for k, v in summary.items() if k != "preempted"}
  pairs = [json.loads(line) for line in open(os.path.join(out, stages.PAIRS))]
  assert len(pairs) == summary["pairs"] > 0 and summary["accuracy_pairs"] > 0  # (the endpoint is right on some)
  log = {json.loads(line)["prompt_id"]: json.loads(line) for line in open(os.path.join(out, "pairs.jsonl.log.jsonl"))}
  for pair in pairs:  # each pair is its prompt's best and worst response by the oracle's scores
    scored = [r["scores"] for r in log[pair["prompt_id"]]["responses"]]
    key = lambda s: (s["accuracy"], sum(s.values()) / 3)
    assert key(pair["chosen_scores"]) == max(map(key, scored)) > key(pair["rejected_scores"]) == min(map(key, scored))


def test_a_search_that_finds_nothing_says_so_instead_of_handing_dpo_an_empty_file(tiny_hf_dir, tmp_path):
  c = configs.load("experiments/pts.py:test")
  c.init_from = tiny_hf_dir
  with pytest.raises(ValueError, match=r"stage pts: no pairs from 4 questions .*a DPO stage cannot train"):
    stages.run(c, str(tmp_path / "pts"))
  assert not stages.finished(str(tmp_path / "pts"))

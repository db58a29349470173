"""fields.Group: each config field declared once (default, rule, help), and every group of the package."""

import ast
import importlib
import os

import ml_collections
import pytest

from phi4_jax import fields, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INNER = fields.Group(depth=fields.Field(2, fields.integer(1), "how deep"))
TOY = fields.Group(
    rate=fields.Field(0.5, fields.number(0, 1, high_open=True), "a share"),
    mode=fields.Field("a", fields.choice(("a", "b")), "a or b"),
    steps=fields.Field(10, fields.integer(1), "how many"),
    inner=fields.Field(INNER, None, "a nested group"),
)


def test_config_gives_the_defaults_then_the_overrides():
  c = TOY.config(steps=3)
  assert isinstance(c, ml_collections.ConfigDict) and isinstance(c.inner, ml_collections.ConfigDict)
  assert c.to_dict() == {"rate": 0.5, "mode": "a", "steps": 3, "inner": {"depth": 2}}
  assert TOY.config().steps == 10  # a fresh ConfigDict each time
  assert TOY.help == {"rate": "a share", "mode": "a or b", "steps": "how many", "inner": "a nested group"}
  assert set(TOY.rules) == {"rate", "mode", "steps"}  # the nested group has no rule of its own


@pytest.mark.parametrize("overrides,message", [
    ({"rate": 1.0}, r"^toy\.rate: must be in \[0, 1\), got 1\.0$"),
    ({"rate": float("inf")}, r"^toy\.rate: must be in \[0, 1\), got inf$"),
    ({"steps": 0}, r"^toy\.steps: must be >= 1, got 0$"),
    ({"steps": 2.5}, r"^toy\.steps: must be an integer, got 2\.5$"),
    ({"mode": "c"}, r"^toy\.mode: must be one of \('a', 'b'\), got 'c'$"),
    ({"inner": {"depth": 0}}, r"^toy\.inner\.depth: must be >= 1, got 0$"),
])
def test_check_names_prefix_field_range_and_value(overrides, message):
  TOY.check(TOY.config(), "toy")
  node = {**TOY.config().to_dict(), **overrides}
  with pytest.raises(ValueError, match=message):
    TOY.check(node, "toy")


def test_unknown_fields_are_refused_with_the_closest_names_and_missing_ones_when_complete():
  with pytest.raises(ValueError, match=r"^unknown field toy\.stesp \(did you mean steps\?\)$"):
    TOY.check({"stesp": 3}, "toy")
  with pytest.raises(ValueError, match=r"^unknown field toy\.inner\.dept \(did you mean depth\?\)$"):
    TOY.check({"inner": {"dept": 3}}, "toy")
  TOY.check({"steps": 3}, "toy")  # a partial node is fine unless complete
  with pytest.raises(ValueError, match=r"^toy\.mode: missing \(its default is 'a'\)$"):
    TOY.check({"rate": 0.5, "steps": 3}, "toy", complete=True)


def test_infinite_numbers_are_refused_with_or_without_a_range():
  assert fields.number(0).error(float("inf")) == "must be finite and >= 0"
  assert fields.number().error(float("nan")) == "must be finite"
  assert fields.number(0).error(float("nan")) == "must be >= 0"
  assert fields.number(1, low_open=True, also=(0,)).error(0) is None


def test_bases_without_and_with_defaults_keep_rule_help_and_order():
  extra = fields.Field(True, fields.boolean(), "x")
  group = fields.Group(TOY.without("inner").with_defaults(rate=0.25), extra=extra)
  assert list(group.fields) == ["rate", "mode", "steps", "extra"]
  assert group.config().rate == 0.25 and TOY.config().rate == 0.5
  assert group.fields["rate"].rule == TOY.fields["rate"].rule and group.help["rate"] == "a share"
  with pytest.raises(ValueError, match=r"unknown field Group\.rat \(did you mean rate\?\)"):
    TOY.with_defaults(rat=0.1)


def _declared_groups() -> list[tuple[str, str]]:
  """(module, name) of every module-level `NAME = fields.Group(...)` (or `fields.Group.of_dataclass(...)`)
  in the package, read with ast."""
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, "phi4_jax")):
    for f in sorted(files):
      if not f.endswith(".py") or f == "fields.py":
        continue
      path = os.path.join(folder, f)
      module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
      for node in ast.parse(open(path).read()).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) in ("fields.Group", "fields.Group.of_dataclass")):
          found += [(module, t.id) for t in node.targets]
  return found


GROUPS = _declared_groups()


def test_the_package_declares_its_config_groups_with_fields():
  names = {f"{m}.{n}" for m, n in GROUPS}
  assert {"phi4_jax.train.config.RUN", "phi4_jax.train.config.OPTIMIZER", "phi4_jax.eval.settings.FIELDS",
          "phi4_jax.posttrain.dpo.FIELDS", "phi4_jax.posttrain.pts.FIELDS", "phi4_jax.posttrain.judge.FIELDS",
          "phi4_jax.posttrain.plurality.FIELDS", "phi4_jax.posttrain.rollouts.SAMPLING",
          "phi4_jax.posttrain.stages.PTS_STAGE", "phi4_jax.posttrain.stages.JUDGE_STAGE",
          "phi4_jax.data.config.SOURCE", "phi4_jax.data.config.MIXTURE", "phi4_jax.data.config.DATA",
          "phi4_jax.model.config.MODEL", "phi4_jax.data.overlap.SETTINGS"} <= names


@pytest.mark.parametrize("module,name", GROUPS)
def test_every_field_of_every_group_has_a_one_line_help_and_its_default_obeys_its_rule(module, name):
  group = getattr(importlib.import_module(module), name)
  for field, f in group.fields.items():
    assert f.help.strip() and "\n" not in f.help, f"{module}.{name}.{field}"
  group.check(group.config(), name, complete=True)


def test_the_migrated_groups_keep_their_previous_defaults():
  from phi4_jax.eval import eval_fields
  from phi4_jax.posttrain import dpo, judge, plurality, pts, stages
  from phi4_jax.train import config
  assert dpo.dpo_fields().to_dict() == {"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid",
                                        "min_pairs": 8, "nll_weight": 0.0, "precompute_reference": False}
  assert pts.pts_fields().to_dict() == {"num_rollouts": 64, "max_new_tokens": 256, "temperature": 1.0,
                                        "top_p": 1.0, "max_batch": 256, "seed": 0, "p_gap": 0.2, "p_min": 0.2,
                                        "p_max": 0.8, "questions_per_round": 8, "balance": True}
  assert plurality.plurality_fields().to_dict() == {
      "max_new_tokens": 256, "temperature": 0.7, "top_p": 1.0, "max_batch": 256, "seed": 0, "num_samples": 8,
      "max_share": 1.0, "min_share": 0.0, "questions_per_call": 16}
  assert judge.judge_fields().to_dict() == {
      "num_responses": 4, "temperature": 0.8, "top_p": 1.0, "max_new_tokens": 256, "judge_retries": 2,
      "judge_max_tokens": 32, "concurrency": 8, "prompts_per_round": 16, "max_batch": 256, "seed": 0}
  judge_stage = stages.stage_fields("judge").to_dict()
  assert {k: v for k, v in judge_stage.items() if k != "settings"} == {
      "kind": "judge", "stage": "judge", "init_from": "", "init_step": -1, "questions": "corpus:parity",
      "num_questions": 0, "responders": "", "judge": "oracle"}
  assert set(stages.stage_fields("pts")) == {"kind", "stage", "init_from", "init_step", "questions",
                                             "num_questions", "settings"}
  assert stages.stage_fields("pts").settings.to_dict() == pts.pts_fields().to_dict()
  assert eval_fields().to_dict() == {
      "tasks": "", "every": 0, "limit": 0, "max_new_tokens": 256, "temperature": 0.0, "num_samples": 1,
      "seed": 0, "timeout_s": 10.0, "template": "chat", "answers_file": "embedded:exercises",
      "choice_file": "embedded:exercises", "perplexity_config": "experiments/pretrain.py:colab",
      "perplexity_tokens": 2048}
  assert config.optimizer_fields().to_dict() == {
      "peak_lr": 3e-4, "warmup_steps": 100, "end_lr_ratio": 0.0, "b1": 0.9, "b2": 0.95, "eps": 1e-8,
      "weight_decay": 0.1, "decay_embeddings": True, "grad_clip_norm": 1.0}
  run = config.base_config().to_dict()
  assert set(run) == {
      "stage", "objective", "seed", "steps", "seq_len", "global_batch_size", "microbatches", "mesh_shape",
      "loss_chunk", "log_every", "checkpoint_every", "keep_checkpoints", "async_checkpointing", "prefetch",
      "init_from", "init_step", "peak_flops_per_device", "tensorboard", "min_free_disk_gb", "keep_period",
      "resume_step", "skip_batches", "spike_factor", "optimizer", "eval"}
  assert run["optimizer"] == config.optimizer_fields().to_dict() and run["eval"] == eval_fields().to_dict()
  names = ("stage", "objective", "steps", "seq_len", "mesh_shape", "loss_chunk", "init_step", "spike_factor",
           "prefetch")
  assert [run[n] for n in names] == ["pretrain", "lm", 1000, 4096, (1, -1, 1), 256, -1, 0.0, 2]


def test_the_thin_names_are_the_groups_rules():
  from phi4_jax.posttrain import dpo, pts, rollouts
  from phi4_jax.train import config
  assert dpo.RULES["beta"] == fields.number(0, low_open=True)
  assert pts.RULES["num_rollouts"] == rollouts.SAMPLING_RULES["num_rollouts"] == fields.integer(1)
  assert config.OPTIMIZER_RULES["b2"] == fields.number(0, 1, high_open=True)
  assert config.RUN_RULES["spike_factor"] == fields.number(1, low_open=True, also=(0,))
  assert "optimizer" not in config.RUN_RULES


def test_the_data_builders_keep_their_previous_defaults():
  from phi4_jax.data import config as data_config
  assert data_config.source("a/*.jsonl", 1).to_dict() == {
      "globs": "a/*.jsonl", "format": "", "text_field": "text", "fraction": 1.0, "unique_tokens": 0.0,
      "max_epochs": 0.0, "min_doc_tokens": 0, "max_doc_tokens": 0}
  assert data_config.chat_source("c", 0.5).text_field == "messages"
  assert data_config.pairs_source("p", 0.5, max_epochs=2.0).to_dict()["text_field"] == ""
  assert data_config.mixture(0.3, {}).to_dict() == {"fraction": 0.3, "sources": {}}
  d = data_config.data({"web": data_config.source("w", 1.0)}, shards=2).to_dict()
  assert {k: v for k, v in d.items() if k != "sources"} == {
      "total_tokens": 0.0, "epoch_margin": 0.02, "docs_per_batch": 64, "read_threads": 2,
      "tokenizer_threads": 1, "prefetch": 4, "worker_count": 0, "shards": 2, "cache_dir": "",
      "long_conversations": "cut", "pack_bins": 8, "pairs_per_row": 4}
  assert d["sources"]["web"]["globs"] == "w"


def test_model_config_is_declared_by_its_dataclass_attributes():
  from phi4_jax.model import ModelConfig
  from phi4_jax.model.config import MODEL
  assert list(MODEL.fields)[:3] == ["vocab_size", "d_model", "n_layers"] and "axis_rules" in MODEL.fields
  cfg = ModelConfig()
  assert (cfg.vocab_size, cfg.d_model, cfg.n_kv_heads, cfg.d_ff, cfg.rope_theta, cfg.attention_impl) == (
      100_352, 5120, 10, 17_920, 250_000.0, "auto")
  assert MODEL.defaults["max_seq_len"] == 16_384 and MODEL.help["head_dim"] == "per-head width"
  with pytest.raises(ValueError, match=r"^config\.model\.rope_theta: must be > 0, got 0\.0$"):
    ModelConfig.from_dict({"rope_theta": 0.0}, where="config.model")
  with pytest.raises(ValueError, match=r"^ModelConfig\.head_dim: must be even for RoPE, got 7$"):
    ModelConfig(head_dim=7)


def test_a_commands_flags_carry_each_fields_help_and_default(capsys):
  from phi4_jax.posttrain import pts
  with pytest.raises(SystemExit):
    pts.parse_args(["--help"])
  text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
  for name, line in pts.FIELDS.help.items():
    default = pts.FIELDS.fields[name].default
    metavar = "[true|false]" if isinstance(default, bool) else name.upper()
    assert f"--settings.{name} {metavar} {' '.join(line.split())} (default: {default})" in text, name
  args = pts.parse_args(["--hf_dir=h", "--questions=q", "--out=o", "--settings.p_gap=0.3",
                         "--settings.num_rollouts=8"])
  assert flags.settings(args, pts.FIELDS).to_dict() == pts.FIELDS.config(p_gap=0.3, num_rollouts=8).to_dict()


def test_settings_flags_from_a_group_parse_bools_and_keep_a_percent_sign_literal():
  import argparse
  group = fields.Group(on=fields.Field(True, fields.boolean(), "100% on"),
                       n=fields.Field(2, fields.integer(1), "n"))
  p = argparse.ArgumentParser()
  flags.add_settings_flags(p, group)
  assert "100% on (default: True)" in " ".join(p.format_help().split())
  assert flags.settings(p.parse_args(["--on=no", "--n=5"]), group).to_dict() == {"on": False, "n": 5}

"""check_config: every stage's config.data is refused early, naming the field, without reading data."""

import os

import ml_collections
import pytest

from phi4_jax import configs
from phi4_jax.data import PlanError, check_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = "config.data.sources.web"


def _pretrain(overrides=None):
  return configs.load(os.path.join(REPO, "experiments/pretrain.py:test"), overrides)


def test_the_stage_presets_pass_and_nothing_is_built(tmp_path):
  for spec in ("pretrain.py:test", "midtrain.py:test", "pretrain.py:colab", "midtrain.py:1b"):
    config = configs.load(os.path.join(REPO, "experiments", spec), {"data.cache_dir": str(tmp_path)})
    check_config(config)
  assert os.listdir(tmp_path) == []  # `corpus:<name>` is checked by name: the corpus is not built
  check_config(configs.load(os.path.join(REPO, "experiments/pretrain.py:phi4_14b")), files=False)


@pytest.mark.parametrize("overrides,message", [
    ({"data.sources.web.fraction": 1.5}, rf"{WEB}\.fraction: must be in \[0, 1\], got 1\.5"),
    ({"data.sources.web.fraction": 0.25},
     r"config\.data\.sources: fractions sum to 1\.1, not 1 \(.*web=0\.25,"),
    ({"data.sources.web.format": "csv"}, rf"{WEB}\.format: unknown format 'csv' \(known: jsonl,"),
    ({"data.sources.web.unique_tokens": -1.0}, rf"{WEB}\.unique_tokens: must be >= 0, got -1\.0"),
    ({"data.sources.web.max_epochs": -2.0}, rf"{WEB}\.max_epochs: must be >= 0, got -2\.0"),
    ({"data.sources.web.min_doc_tokens": 10, "data.sources.web.max_doc_tokens": 5},
     rf"{WEB}\.min_doc_tokens: 10 is over {WEB}\.max_doc_tokens=5"),
    ({"data.sources.web.max_doc_tokens": -1}, rf"{WEB}\.max_doc_tokens: must be >= 0, got -1"),
    ({"data.epoch_margin": -0.5}, r"config\.data\.epoch_margin: must be >= 0, got -0\.5"),
    ({"data.docs_per_batch": 0}, r"config\.data\.docs_per_batch: must be >= 1, got 0"),
    ({"data.tokenizer_threads": 0}, r"config\.data\.tokenizer_threads: must be >= 1, got 0"),
    ({"data.read_threads": -1}, r"config\.data\.read_threads: must be >= 0, got -1"),
    ({"data.prefetch": -1}, r"config\.data\.prefetch: must be >= 0, got -1"),
    ({"data.worker_count": -1}, r"config\.data\.worker_count: must be >= 0, got -1"),
    ({"data.shards": -2}, r"config\.data\.shards: must be >= 0, got -2"),
    ({"data.total_tokens": -1.0}, r"config\.data\.total_tokens: must be >= 0, got -1\.0"),
    ({"data.sources.web.globs": "/nonexistent/dir/*.jsonl"},
     rf"{WEB}\.globs: glob '/nonexistent/dir/\*\.jsonl' matches no file"),
    ({"data.sources.web.globs": "corpus:web, corpus:nope"},
     rf"{WEB}\.globs: 'corpus:nope': the embedded corpus has no source 'nope' \(it has web,"),
    ({"data.sources.web.globs": " , "}, rf"{WEB}\.globs: no path globs given"),
    ({"data.sources.web.fraction": -0.1}, rf"{WEB}\.fraction: must be in \[0, 1\], got -0\.1"),
    ({"data.sources.web.unique_tokens": float("inf")},
     rf"{WEB}\.unique_tokens: must be finite and >= 0, got inf"),
    ({"data.sources.web.max_epochs": float("nan")}, rf"{WEB}\.max_epochs: must be >= 0, got nan"),
    ({"data.sources.web.min_doc_tokens": -3}, rf"{WEB}\.min_doc_tokens: must be >= 0, got -3"),
    ({"data.total_tokens": float("inf")}, r"config\.data\.total_tokens: must be finite and >= 0, got inf"),
    ({"data.epoch_margin": float("inf")}, r"config\.data\.epoch_margin: must be finite and >= 0, got inf"),
    ({"data.read_threads": 8, "data.prefetch": 2},
     r"config\.data\.prefetch: must be 0 \(no read-ahead\) or >= config\.data\.read_threads=8 .*got 2"),
    ({"data.shards": 3}, r"config\.data\.shards: must divide config\.global_batch_size=8 .*got 3"),
    ({"data.sources.web.text_field": ""},
     rf"{WEB}\.text_field: is '' \(each record is its raw text\), which only ArrayRecord files can "
     r"be, but the embedded corpus is jsonl"),
    ({"data.sources.web.text_field": "", "data.sources.web.format": "parquet"},
     rf"{WEB}\.text_field: is '' .* but {WEB}\.format is 'parquet'"),
])
def test_bad_fields_are_refused_by_name(overrides, message):
  with pytest.raises(ValueError, match=message):
    check_config(_pretrain(overrides))


def _replace_web(config, **fields):
  web = {**config.data.sources.web.to_dict(), **fields}
  config.data.sources.web = ml_collections.ConfigDict({k: v for k, v in web.items() if v is not None})
  return config


def test_unknown_missing_and_mistyped_source_fields():
  with pytest.raises(ValueError, match=rf"unknown field {WEB}\.min_doc_token \(did you mean min_doc_tokens"):
    check_config(_replace_web(_pretrain(), min_doc_token=5))
  with pytest.raises(ValueError, match=rf"{WEB}\.text_field: missing"):
    check_config(_replace_web(_pretrain(), text_field=None))
  with pytest.raises(ValueError, match=rf"{WEB}\.max_epochs: must be a number, got '3'"):
    check_config(_replace_web(_pretrain(), max_epochs="3"))
  with pytest.raises(ValueError, match=rf"{WEB}\.min_doc_tokens: must be an integer, got 2\.5"):
    check_config(_replace_web(_pretrain(), min_doc_tokens=2.5))
  with pytest.raises(ValueError, match=rf"{WEB}\.globs: must be a string, got 3"):
    check_config(_replace_web(_pretrain(), globs=3))
  with pytest.raises(ValueError, match=rf"{WEB}\.format: must be a string, got 3"):
    check_config(_replace_web(_pretrain(), format=3))
  config = _pretrain()
  config.data = ml_collections.ConfigDict({**config.data, "cache_dir": 7})
  with pytest.raises(ValueError, match=r"config\.data\.cache_dir: must be a string, got 7"):
    check_config(config)
  config = _pretrain()
  config.data.shard = 2
  with pytest.raises(ValueError, match=r"unknown field config\.data\.shard \(did you mean shards"):
    check_config(config)


def test_files_need_a_known_format_and_files_false_skips_them(tmp_path):
  (tmp_path / "a.txt").write_text("hello\n")
  config = _pretrain({"data.sources.web.globs": f"{tmp_path}/*.txt"})
  with pytest.raises(ValueError, match=rf"{WEB}\.format: is '' .*a\.txt has none of a known format"):
    check_config(config)
  check_config(_pretrain({"data.sources.web.globs": "/nonexistent/*.jsonl"}), files=False)


def test_a_declared_plan_over_max_epochs_is_refused_without_files():
  config = configs.load(os.path.join(REPO, "experiments/pretrain.py:phi4_14b"),
                        {"data.total_tokens": 2e13})
  with pytest.raises(PlanError, match=r"source 'acquired': the plan repeats it 3\.45 times"):
    check_config(config, files=False)


def test_validate_checks_a_midtrain_stage_nested_fractions():
  from phi4_jax.train.config import validate
  spec = os.path.join(REPO, "experiments/midtrain.py:test")
  validate(configs.load(spec), 1, check_init_from=False)
  bad = configs.load(spec, {"data.sources.replay.sources.web.fraction": 0.5})
  message = (r"config\.data\.sources\.replay\.sources: fractions sum to 1\.35, not 1 "
             r"\(acquired=0\.1, code=0\.2, synthetic=0\.4, web=0\.5, web_rewrites=0\.15\)")
  with pytest.raises(ValueError, match=message):
    validate(bad, 1, check_init_from=False)


def test_a_recipe_refuses_a_bad_midtrain_stage_before_pretraining_trains(tmp_path, monkeypatch):
  from phi4_jax.recipe import runner as recipe
  from phi4_jax.recipe import stages
  trained = []
  monkeypatch.setattr(stages.TrainStage, "run", lambda self, stage, workdir, prefix: trained.append(workdir))
  # batch 8: divisible by the 8 fake devices of conftest
  config = configs.load(os.path.join(REPO, "experiments/recipe.py:test"),
                        {"midtrain.global_batch_size": 8,
                         "midtrain.data.sources.long_half_row.fraction": 0.2})
  message = (r"stage midtrain: config\.data\.sources: fractions sum to 1\.1, not 1 "
             r"\(long_full_row=0\.2, long_half_row=0\.2, replay=0\.7\)")
  with pytest.raises(ValueError, match=message):
    recipe.run(config, str(tmp_path))
  assert trained == []


def test_every_data_field_has_a_check():
  """Each field data/config.py's builders give has a rule in its group (sources: _check_sources)."""
  from phi4_jax.data import config as data_config
  assert set(data_config.data({})) - {"sources"} == set(data_config.DATA.rules)
  assert set(data_config.source("", 0.0)) == set(data_config.SOURCE.rules)
  assert set(data_config.mixture(0.0, {})) == {"fraction", "sources"} == set(data_config.MIXTURE.fields)
  assert set(data_config.MIXTURE.rules) == {"fraction"}


def test_raw_text_files_need_arrayrecord(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
  config = _pretrain({"data.sources.web.globs": f"{tmp_path}/*.jsonl", "data.sources.web.text_field": ""})
  with pytest.raises(ValueError, match=rf"{WEB}\.text_field: is '' .* but {tmp_path}/a\.jsonl is jsonl"):
    check_config(config)
  (tmp_path / "b.arrayrecord").write_bytes(b"")
  check_config(_pretrain({"data.sources.web.globs": f"{tmp_path}/*.arrayrecord",
                          "data.sources.web.text_field": ""}))


def test_shards_errors_name_the_field(tmp_path):
  from phi4_jax.data import make_train_iterator
  config = _pretrain({"data.shards": 4, "data.cache_dir": str(tmp_path)})
  with pytest.raises(ValueError, match=r"config\.data\.shards: must be a multiple of the 3 jax "
                     r"processes \(0 = one shard per process\), got 4"):
    make_train_iterator(config, 0, 3)
  config = _pretrain({"data.cache_dir": str(tmp_path)})
  with pytest.raises(ValueError, match=r"config\.global_batch_size: must be divisible by the 3 data "
                     r"shards \(config\.data\.shards=0; 0 = one per process\), got 8"):
    make_train_iterator(config, 0, 3)

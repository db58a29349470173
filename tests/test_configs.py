"""phi4_jax/configs.py (the one loader of `file.py:arg` configs) and ModelConfig <-> config.model."""

import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import pytest

from phi4_jax import configs, main, model
from phi4_jax.model import ModelConfig
from phi4_jax.train.config import model_config, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "experiments/pretrain.py:test")
RULES = (("vocab", "fsdp"), ("mlp", ("fsdp", "tensor")), ("embed", None))


@pytest.fixture()
def small(tmp_path):
  path = tmp_path / "small.py"
  path.write_text(textwrap.dedent('''
      import ml_collections

      def get_config(arg="a"):
        return ml_collections.ConfigDict({"name": arg, "steps": 4, "lr": 1e-3, "shape": (1, -1, 1),
                                          "flag": True, "text": "", "sub": {"x": 1}})
  '''))
  return str(path)


def test_python_values_and_command_line_text_build_the_same_config(small):
  overrides = {"steps": 7, "lr": 2.5e-4, "shape": (2, 4, 1), "flag": False,
               "text": "it's \"quoted\" $HOME", "sub.x": 3}
  loaded = configs.load(f"{small}:b", overrides)
  assert loaded.to_dict() == {"name": "b", "steps": 7, "lr": 2.5e-4, "shape": (2, 4, 1),
                              "flag": False, "text": "it's \"quoted\" $HOME", "sub": {"x": 3}}
  typed = configs.parse_args([f"--config={small}:b", "--config.steps=7", "--config.lr=2.5e-4",
                              "--config.shape=(2,4,1)", "--noconfig.flag",
                              "--config.text=it's \"quoted\" $HOME", "--config.sub.x=3"])
  assert typed.to_dict() == loaded.to_dict()
  assert configs.config_args(small, {"flag": True, "shape": [1, 2]}) == [
      f"--config={small}", "--config.flag=true", "--config.shape=(1, 2)"]
  loaded.new_field = 1  # load() returns it unlocked, for scripts to extend
  with pytest.raises(AttributeError):
    typed.new_field = 1  # phi4_jax.main's config is locked


def test_errors_name_the_flag(small, tmp_path):
  with pytest.raises(ValueError, match=r"--config.sub.y: unknown field config.sub.y \(known: x\)"):
    configs.load(small, {"sub.y": 1})
  with pytest.raises(ValueError, match=r"--config.nope: unknown field config.nope"):
    configs.parse_args([f"--config={small}", "--config.nope=1"])
  with pytest.raises(ValueError, match=r"--config.steps=abc"):
    configs.parse_args([f"--config={small}", "--config.steps=abc"])
  with pytest.raises(ValueError, match=r"--config=.*missing.py does not exist"):
    configs.load(str(tmp_path / "missing.py"))
  (tmp_path / "none.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match=r"none.py has no get_config\(arg\) function"):
    configs.load(str(tmp_path / "none.py"))
  with pytest.raises(ValueError, match="Unknown command line flag 'workdir'"):
    configs.parse_args([f"--config={small}", "--workdir=/w"])  # a config's flags only
  config, args = main.parse_args([f"--config={small}", "--workdir=/w", "--config.steps", "6", "--dry_run"])
  assert (config.steps, args.workdir, args.dry_run) == (6, "/w", True)
  assert main.parse_args([f"--config={small}", "--dry_run=false"])[1].dry_run is False
  assert main.parse_args([f"--config={small}", "--nodry_run"])[1].dry_run is False
  with pytest.raises(ValueError, match="Unknown command line flag 'wokdir'"):
    main.parse_args([f"--config={small}", "--wokdir=/w"])
  with pytest.raises(ValueError, match="Unknown command line flag 'work'"):
    main.parse_args([f"--config={small}", "--work=/w"])  # (no abbreviations)
  with pytest.raises(ValueError, match="required: --config"):
    main.parse_args(["--workdir=/w"])


def test_every_model_field_round_trips_through_config_model():
  for name in ("test", "colab", "1b", "phi4_14b"):
    cfg = ModelConfig.preset(name)
    as_dict = cfg.to_config_dict()
    assert sorted(as_dict) == sorted(cfg.to_dict())  # every field, axis_rules included
    assert ModelConfig.from_config_dict(as_dict) == cfg


def test_axis_rules_override_takes_effect():
  config = configs.load(PRETRAIN, {"model.axis_rules": RULES})
  cfg = model_config(config)
  assert cfg.axis_rules == RULES
  validate(config, num_devices=8)
  specs = jax.tree.map(lambda s: s.spec, model.param_shardings(cfg, model.make_mesh((1, -1, 1))))
  assert specs["embed"]["embedding"] == jax.sharding.PartitionSpec("fsdp", None)  # vocab -> fsdp
  assert specs["layers"]["mlp"]["up"]["kernel"] == jax.sharding.PartitionSpec(
      None, None, ("fsdp", "tensor"))  # [layers, embed, mlp]: embed unsharded, mlp on both axes
  default = model_config(configs.load(PRETRAIN))
  assert default.axis_rules == model.ModelConfig().axis_rules != RULES


@pytest.mark.parametrize("overrides,message", [
    ({"model.d_model": 0}, r"config.model.d_model: must be >= 1, got 0"),
    ({"model.dtype": "fp8"}, r"config.model.dtype: must be one of"),
    ({"model.axis_rules": ("embed", None)}, r"config.model.axis_rules: 'embed' is not a \(logical"),
    ({"model.axis_rules": (("embed", 3),)}, r"config.model.axis_rules: rule 'embed' maps to 3"),
    ({"model.axis_rules": (("embed", "fsdq"),)},
     r"config.model.axis_rules: rule 'embed' maps to mesh axis 'fsdq'"),
    ({"model.axis_rules": (("embed", None), ("embed", "fsdp"))}, r"logical axes \['embed'\] have more"),
])
def test_bad_model_values_name_config_model_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    validate(configs.load(PRETRAIN, overrides), num_devices=8)


def test_unknown_or_mistyped_model_fields_are_refused():
  model_dict = ModelConfig.preset("test").to_config_dict()
  model_dict.d_modle = 3
  with pytest.raises(ValueError, match=r"unknown field config.model.d_modle \(did you mean d_model\?\)"):
    ModelConfig.from_config_dict(model_dict)
  written = {**ModelConfig.preset("test").to_dict(), "scan_layers": 1, "d_model": 64.0}
  with pytest.raises(ValueError, match=r"config.model.d_model: must be an integer, got 64.0"):
    ModelConfig.from_config_dict(ml_collections.ConfigDict(written))
  written["d_model"] = 64
  with pytest.raises(ValueError, match=r"config.model.scan_layers: must be true or false, got 1"):
    ModelConfig.from_config_dict(ml_collections.ConfigDict(written))


def test_main_takes_axis_rules_from_the_command_line(tmp_path):
  """phi4_jax.main's own parsing: a bad mesh axis in --config.model.axis_rules stops it, named."""
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  base = [sys.executable, "-m", "phi4_jax.main", f"--config={PRETRAIN}", f"--workdir={tmp_path}/w"]
  bad = subprocess.run([*base, "--config.model.axis_rules=(('embed', 'fsdq'),)"], env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0
  assert "config.model.axis_rules: rule 'embed' maps to mesh axis 'fsdq'" in bad.stderr
  unknown = subprocess.run([*base, "--config.model.nope=1"], env=env, capture_output=True,
                           text=True, timeout=300)
  assert unknown.returncode == 1
  assert "--config.model.nope: unknown field config.model.nope" in unknown.stderr
  assert not os.path.exists(tmp_path / "w")

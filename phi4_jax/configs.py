"""The one way a config is built: `path/file.py:arg` -> get_config(arg), then `--config.a.b=v`.

phi4_jax.main's --config flag (declared by phi4_jax/flags.py, the commands' one flag library), the
launchers (checking a job's flags) and sweeps (a point's overrides, given as Python values and run
as flags) all parse through `parse_args`: ml_collections' override syntax (`--config.mesh_shape=
"(1,4,1)"`, `--config.tensorboard=false`, unknown fields refused), read by its config_flags on a
private absl FlagValues, on a file loaded by `load_file`. A config built here is therefore the one
`python -m phi4_jax.main` builds from the same flags.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from phi4_jax import fields

FLAG = "config"
HELP = "experiments/<stage>.py:<preset>; override any field with --config.<field>=value"
_OVERRIDE = re.compile(rf"^--?(?:no)?{FLAG}\.([^=]+)")


def load(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """`path/to/file.py:arg` with dotted-key overrides ({"optimizer.peak_lr": 1e-3}), built from the
  same flags phi4_jax.main would get (`config_args`); returned unlocked, for scripts to extend."""
  config = parse_args(config_args(spec, overrides))
  config.unlock()
  return config


def config_args(spec: str, overrides: Mapping[str, Any] | None = None) -> list[str]:
  """`--config=spec --config.key=value ...`: Python values as the override flags parse them back."""
  return [f"--{FLAG}={spec}", *(f"--{FLAG}.{key}={flag_value(value)}"
                                for key, value in (overrides or {}).items())]


def flag_value(value: Any) -> str:
  """A Python value as text that `--config.key=<text>` parses back to it (a str is taken as is)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, ml_collections.ConfigDict):
    return repr(value.to_dict())
  return value if isinstance(value, str) else repr(value)


def parse_args(args: Sequence[str]) -> ml_collections.ConfigDict:
  """The config from `--config=... --config.a=v ...` (nothing else is accepted), parsed as
  phi4_jax.main parses them. Raises ValueError naming the flag."""
  argv = ["phi4_jax.main", *args]
  flag_values = flags.FlagValues()
  holder = define_flag(flag_values, sys_argv=argv)
  try:
    rest = flag_values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(str(e)) from e
  if rest[1:]:
    raise ValueError(f"unexpected arguments {rest[1:]}")
  if holder.value is None:
    raise ValueError(f"no --{FLAG}=experiments/<stage>.py:<preset>")
  return holder.value


def define_flag(flag_values: flags.FlagValues, sys_argv: list[str]) -> flags.FlagHolder:
  """Defines --config (a `file.py:arg` spec, loaded by load_file and locked) with its
  `--config.<field>=value` overrides on flag_values; sys_argv: the command line."""
  holder = config_flags.DEFINE_config_file(FLAG, None, HELP, flag_values=flag_values,
                                           lock_config=True, sys_argv=sys_argv)
  flag_values[FLAG].parser = _FileParser(sys_argv)
  return holder


class _FileParser(flags.ArgumentParser):
  """--config's value -> load_file(value), locked, after checking the overrides name real fields."""

  def __init__(self, sys_argv: list[str]):
    self._sys_argv = sys_argv

  def parse(self, argument: str) -> ml_collections.ConfigDict:
    try:
      config = load_file(argument)
    except OSError as e:  # absl reports only ValueError and TypeError with the flag's name
      raise ValueError(str(e)) from e
    if not isinstance(config, ml_collections.ConfigDict):
      raise TypeError(f"get_config returned {type(config).__name__}, not an ml_collections.ConfigDict")
    for arg in self._sys_argv:
      match = _OVERRIDE.match(arg)
      if match:
        check_field(config, match.group(1))
    config.lock()
    return config

  def flag_type(self) -> str:
    return "config file"


def check_field(config: ml_collections.ConfigDict, key: str) -> None:
  """Raises ValueError naming `--config.<key>` when config has no field at the dotted key."""
  node = config
  parts = key.split(".")
  for i, name in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ValueError(f"--{FLAG}.{key}: {'.'.join([FLAG, *parts[:i]])} is a value, not a group of fields")
    if name not in node:
      try:
        fields.unknown([name], node, ".".join([FLAG, *parts[:i]]))
      except ValueError as e:
        raise ValueError(f"--{FLAG}.{key}: {e}") from None
    node = node[name]


def load_file(spec: str, function: str = "get_config") -> Any:
  """`path/to/file.py[:arg]` -> the file's function(arg), or function() without an arg."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist")
  module = _run_file(path)
  if not callable(getattr(module, function, None)):
    raise ValueError(f"{path} has no {function}(arg) function")
  return getattr(module, function)(arg) if arg else getattr(module, function)()


def _run_file(path: str):
  """Runs a Python file as a fresh module (not entered in sys.modules) and returns it."""
  module_spec = importlib.util.spec_from_file_location(f"_phi4_file_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module

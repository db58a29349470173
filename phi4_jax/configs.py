"""Loading `experiments/<file>.py:<arg>` config files outside absl flags (recipes, sweeps, tools)."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """`path/to/file.py:arg` -> file's get_config(arg), with dotted-key overrides applied."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} (from {spec!r}) does not exist")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} has no get_config(arg) function")
  config = module.get_config(arg) if arg else module.get_config()
  for key, value in (overrides or {}).items():
    set_dotted(config, key, value)
  return config


def load_module(path: str):
  """Runs a Python file as a fresh module (not entered in sys.modules) and returns it."""
  module_spec = importlib.util.spec_from_file_location(f"_phi4_file_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def set_dotted(config: ml_collections.ConfigDict, key: str, value) -> None:
  """config['a.b.c'] = value, refusing keys the config does not have (typos fail loudly)."""
  *parents, leaf = key.split(".")
  node = config
  for i, name in enumerate(parents):
    if name not in node:
      raise KeyError(f"config has no field {'.'.join(parents[:i + 1])!r} (override {key!r})")
    node = node[name]
  if leaf not in node:
    raise KeyError(f"config has no field {key!r}")
  node[leaf] = value

"""Command-line flags the sampling tools share: which model, and a settings ConfigDict as flags."""

from __future__ import annotations

import argparse
import sys

import ml_collections

from phi4_jax import fields


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """--workdir (a stage's workdir) or --hf_dir (a Hugging Face folder), and --step."""
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="the model: a stage's workdir (its latest checkpoint, or --step)")
  source.add_argument("--hf_dir", help="the model: a Hugging Face Phi3ForCausalLM folder")
  p.add_argument("--step", type=int, default=None)


def add_settings_flags(p: argparse.ArgumentParser, defaults: ml_collections.ConfigDict | fields.Group,
                       group: str = "") -> None:
  """One flag per field of `defaults`, typed by its default (a bool's flag takes true/false, yes/no
  or 1/0); a Group's fields also give each flag its one-line help. With `group` (the settings'
  name in a stage config, e.g. "settings"), a field is `--<group>.<name>`, as a recipe spells it
  (`--config.<stage>.<group>.<name>`); the old `--<name>` still works and says it is deprecated."""
  notes = defaults.help if isinstance(defaults, fields.Group) else {}
  for name, value in _config(defaults).items():
    note = notes.get(name, "").replace("%", "%%")
    kind = _boolean if isinstance(value, bool) else type(value)
    p.add_argument(f"--{group}.{name}" if group else f"--{name}", dest=name, type=kind, default=value,
                   help=f"{note} (default: %(default)s)".lstrip())
    if group:
      p.add_argument(f"--{name}", dest=name, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                     action=_Deprecated, new=f"--{group}.{name}")


class _Deprecated(argparse.Action):
  """An old flag spelling: sets the same value and prints one line naming the new spelling."""

  def __init__(self, *args, new: str, **kwargs):
    super().__init__(*args, **kwargs)
    self.new = new

  def __call__(self, parser, namespace, values, option_string=None):
    print(f"{parser.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
    setattr(namespace, self.dest, values)


def _config(defaults: ml_collections.ConfigDict | fields.Group) -> ml_collections.ConfigDict:
  return defaults.config() if isinstance(defaults, fields.Group) else defaults


def _boolean(text: str) -> bool:
  if text.lower() in ("true", "yes", "1"):
    return True
  if text.lower() in ("false", "no", "0"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def settings(args: argparse.Namespace,
             defaults: ml_collections.ConfigDict | fields.Group) -> ml_collections.ConfigDict:
  """The settings the flags of add_settings_flags(defaults) gave."""
  return ml_collections.ConfigDict({name: getattr(args, name) for name in _config(defaults)})

"""The one flag library of every command (argparse): one parser class, --config with its
`--config.<field>=v` overrides, booleans as absl spelled them, numbers checked by their field's
rule, which model, `--overwrite`, and a settings group as flags (`--<group>.<name>`, as a recipe
spells the same field)."""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence

import ml_collections

from phi4_jax import configs, fields


class UsageError(ValueError):
  """A command line that does not parse: the message names the flag."""


class Parser(argparse.ArgumentParser):
  """Every command's parser: argparse without abbreviations (`--work` is not `--workdir`), described
  by the first paragraph of the command's docstring. parse_args exits 2 with the usage on a bad command
  line, as argparse does; parse_known_args raises UsageError instead, for callers that check flags
  without running them (main.parse_args, a launcher checking a job's)."""

  def __init__(self, prog: str | None = None, doc: str | None = None, **kwargs):
    kwargs.setdefault("description", " ".join((doc or "").split("\n\n")[0].split()) or None)
    super().__init__(prog=prog, allow_abbrev=False, **kwargs)

  def error(self, message: str):
    raise UsageError(message)

  def parse_args(self, args=None, namespace=None):
    try:
      return super().parse_args(args, namespace)
    except UsageError as e:
      self.exit(2, f"{self.format_usage()}{self.prog}: error: {e}\n")


def add_config_flag(p: argparse.ArgumentParser) -> None:
  """--config=experiments/<stage>.py:<preset>; its `--config.<field>=v` overrides are the
  arguments `parse_with_config` hands to configs.parse_args."""
  p.add_argument(f"--{configs.FLAG}", required=True, metavar="FILE.py:PRESET", help=configs.HELP)


def parse_with_config(p: argparse.ArgumentParser,
                      argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
  """(the config, the other flags) from argv; the arguments p does not know are --config's
  overrides, parsed in order by configs.parse_args (which refuses anything else, named)."""
  args, overrides = p.parse_known_args(list(argv))
  return configs.parse_args([f"--{configs.FLAG}={args.config}", *overrides]), args


def command_line(p: argparse.ArgumentParser,
                 argv: Sequence[str] | None = None) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
  """parse_with_config on argv (default: sys.argv's), or exit 1 with the usage and one `error:`
  line naming the flag, the config file or its field."""
  try:
    return parse_with_config(p, sys.argv[1:] if argv is None else argv)
  except ValueError as e:
    sys.exit(f"{p.format_usage()}error: {e}")


def add_bool(p: argparse.ArgumentParser, flag: str, default: bool, help: str, dest: str | None = None,
             **kwargs) -> None:
  """`--x`, `--x=true|false|yes|no|1|0` and `--nox`, as absl spelled a boolean flag."""
  dest = dest or flag.lstrip("-")
  p.add_argument(flag, dest=dest, nargs="?", const=True, default=default, type=_boolean, help=help,
                 metavar="true|false", **kwargs)
  p.add_argument(f"--no{flag.lstrip('-')}", dest=dest, action="store_false", help=argparse.SUPPRESS)


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """--workdir (a stage's workdir) or --hf_dir (a Hugging Face folder), and --step."""
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="the model: a stage's workdir (its latest checkpoint, or --step)")
  source.add_argument("--hf_dir", help="the model: a Hugging Face Phi3ForCausalLM folder")
  p.add_argument("--step", type=int, default=None)


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
  """--coordinator_address, --num_processes and --process_id of a multi-process job (launch/local.py
  passes them; 0 and -1 leave them to JAX's cluster auto-detection)."""
  p.add_argument("--coordinator_address", default="", help="host:port of process 0 (multi-process)")
  p.add_argument("--num_processes", type=int, default=0, help="processes in the job (0: auto-detect)")
  p.add_argument("--process_id", type=int, default=-1, help="this process's index (-1: auto-detect)")


def apply_overrides(config: ml_collections.ConfigDict, args: Sequence[str], name: str = "config") -> list[str]:
  """Sets each `--<name>.<dotted field>=value` of args in `config` (nested groups included), the
  value parsed as the field's current type (a boolean as add_bool reads one); returns the other
  arguments. An unknown field is a ValueError naming it (with the closest names)."""
  rest = []
  for arg in args:
    if not arg.startswith(f"--{name}."):
      rest.append(arg)
      continue
    key, sep, text = arg[len(f"--{name}."):].partition("=")
    if not sep:
      raise UsageError(f"{arg}: expected --{name}.<field>=<value>")
    node, *path = [config]
    parts = key.split(".")
    for k, part in enumerate(parts):
      fields.unknown([part], node.keys(), ".".join([name, *parts[:k]]))
      if k < len(parts) - 1:
        node = node[part]
    old = node[parts[-1]]
    try:
      value = (_boolean(text) if isinstance(old, bool) else type(old)(text) if isinstance(old, (int, float, str))
               else ast.literal_eval(text))
    except (ValueError, SyntaxError, argparse.ArgumentTypeError) as e:
      raise UsageError(f"--{name}.{key}={text!r}: not a {type(old).__name__} ({e})") from None
    node[parts[-1]] = float(value) if isinstance(old, float) else value
  return rest


def ruled(rule: fields.Rule):
  """An argparse type that parses a value as `rule`'s kind (int or number) and refuses one out of
  its range: `--batch_prompts=-3` is "argument --batch_prompts: must be >= 1, got -3"."""
  def parse(text: str):
    try:
      value = int(text) if rule.kind == "int" else float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {'an integer' if rule.kind == 'int' else 'a number'}, "
                                       f"got {text!r}") from None
    why = rule.error(value)
    if why:
      raise argparse.ArgumentTypeError(f"{why}, got {text}")
    return value
  parse.__name__ = rule.kind  # (argparse names the type in some errors)
  return parse


def add_overwrite_flag(p: argparse.ArgumentParser) -> None:
  """--overwrite: a resumable command's output made by another run (store/fingerprint.py) is
  started over instead of refused."""
  add_bool(p, "--overwrite", False, "start the output over when it was made from another model, "
           "other inputs or other settings (without it such a rerun is refused)")


def add_settings_flags(p: argparse.ArgumentParser, defaults: ml_collections.ConfigDict | fields.Group,
                       group: str = "", synonyms: tuple[str, ...] = ()) -> None:
  """One flag per field of `defaults`, typed by its default (a bool's flag takes true/false, yes/no
  or 1/0); a Group's fields also give each flag its one-line help. With `group` (the settings'
  name in a stage config, e.g. "settings"), a field is `--<group>.<name>`, as a recipe spells it
  (`--config.<stage>.<group>.<name>`); the old `--<name>` still works and says it is deprecated,
  except for the names in `synonyms`, which a command documents as its own flags."""
  notes = defaults.help if isinstance(defaults, fields.Group) else {}
  rules = defaults.rules if isinstance(defaults, fields.Group) else {}
  for name, value in _config(defaults).items():
    note = notes.get(name, "").replace("%", "%%")
    rule = rules.get(name)
    kind = (_boolean if isinstance(value, bool) else
            ruled(rule) if rule is not None and rule.kind in ("int", "number") else type(value))
    flag, note = f"--{group}.{name}" if group else f"--{name}", f"{note} (default: %(default)s)".lstrip()
    if isinstance(value, bool):
      add_bool(p, flag, value, note, dest=name)
    else:
      p.add_argument(flag, dest=name, type=kind, default=value, help=note)
    if group and name in synonyms:
      p.add_argument(f"--{name}", dest=name, type=kind, default=argparse.SUPPRESS, help=f"the same as {flag}")
    elif group:
      p.add_argument(f"--{name}", dest=name, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                     action=_Deprecated, new=flag)


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

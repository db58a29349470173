"""Filling the job templates in launch/templates: `{{name}}` placeholders, all required."""

from __future__ import annotations

import json
import os
import re
import shlex

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(text: str, values: dict[str, object], name: str = "template") -> str:
  """Replaces every `{{key}}` with str(values[key]); a missing or unused key is an error."""
  used = set(_PLACEHOLDER.findall(text))
  missing = sorted(used - set(values))
  if missing:
    raise KeyError(f"{name} needs values for {missing}")
  unused = sorted(set(values) - used)
  if unused:
    raise KeyError(f"{name} has no placeholders for {unused}")
  return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render(template: str, values: dict[str, object]) -> str:
  """launch/templates/<template> filled with values."""
  with open(os.path.join(TEMPLATE_DIR, template), encoding="utf-8") as f:
    return fill(f.read(), values, template)


def shell_words(args: list[str]) -> str:
  """Arguments quoted for bash, space-separated."""
  return " ".join(shlex.quote(a) for a in args)


def shell_path(path: str) -> str:
  """A path quoted for bash, keeping a leading `~/` expandable."""
  if path == "~" or path.startswith("~/"):
    rest = path[2:]
    return '"$HOME"' + ("/" + shlex.quote(rest) if rest else "")
  return shlex.quote(path)


def process_values(spec, job) -> dict[str, str]:
  """The values every shell template's training command uses: cd repo_dir, run setup, mkdir
  workdir, then `python -m phi4_jax.main train_args` (spec has repo_dir, setup and python)."""
  return {"repo_dir": shell_path(spec.repo_dir), "setup": spec.setup,
          "workdir": shell_path(job.workdir), "python": shell_path(spec.python),
          "train_args": shell_words(list(job.args))}


def yaml_value(value: object) -> str:
  """A YAML flow value (JSON is YAML) for any string, number, list or mapping."""
  return json.dumps(value)

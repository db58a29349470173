"""What the cluster targets (slurm, tpu, gke) share: spec flags, checks, print / write / submit.

A target module defines `Spec` (a frozen dataclass of `option` fields), `SUFFIX`,
`render_job(spec, job) -> str`, `submit_command(text) -> (argv, stdin)`, `named(spec, name) -> Spec`
(a run name for sweeps) and `devices(spec) -> int | None` (accelerators in the job, to check the
config).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import subprocess
import sys
from types import ModuleType
from typing import Any, TextIO

from launch import job as job_lib

TARGETS = ("slurm", "tpu", "gke")
REQUIRED = dataclasses.MISSING


def option(default: Any, help_text: str) -> Any:
  """A Spec field with its flag help; default REQUIRED makes the flag required."""
  if isinstance(default, list):
    return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help_text})
  return dataclasses.field(default=default, metadata={"help": help_text})


def check_positive(spec: Any, *names: str) -> None:
  for name in names:
    if getattr(spec, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(spec, name)}")


def target(name: str) -> ModuleType:
  if name not in TARGETS:
    raise ValueError(f"--target must be one of {TARGETS}, got {name!r}")
  return importlib.import_module(f"launch.{name}")


def add_spec_flags(parser: argparse.ArgumentParser, spec_cls: type) -> None:
  """One `--field` flag per Spec field (list fields repeat: --node_selector=a=b --node_selector=c=d)."""
  for f in dataclasses.fields(spec_cls):
    kwargs = {"help": f.metadata["help"]}
    if f.default is REQUIRED and f.default_factory is REQUIRED:
      kwargs["required"] = True
    if f.default_factory is not REQUIRED:
      kwargs.update(action="append", default=None)
    elif f.type in ("int", int):
      kwargs.update(type=int, default=f.default)
    else:
      kwargs.update(default=f.default)
    parser.add_argument(f"--{f.name}", **kwargs)


def spec_from_flags(spec_cls: type, flags: argparse.Namespace) -> Any:
  values = {f.name: getattr(flags, f.name) for f in dataclasses.fields(spec_cls)}
  return spec_cls(**{k: v for k, v in values.items() if v is not None})


def emit(target_module: ModuleType, spec: Any, job: job_lib.Job, path: str = "",
         submit: bool = False, out: TextIO | None = None) -> str:
  """Checks the job and renders it; writes it to path (if given) and submits it (if asked; the
  submitting command's output goes to `out`, default this process's)."""
  job_lib.check_shared_workdir(job)
  job_lib.check(job, target_module.devices(spec))
  text = target_module.render_job(spec, job)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  if submit:
    argv, stdin = target_module.submit_command(text)
    status = subprocess.run(argv, input=stdin, text=True, stdout=out, stderr=out).returncode
    if status:
      raise RuntimeError(f"{argv[0]} (submitting the job) failed with status {status}")
  return text


def main(target_module: ModuleType, argv: list[str] | None = None) -> int:
  """`python -m launch.<target> [spec flags] [--output=F] [--submit] -- <phi4_jax.main flags>`."""
  from launch.local import split_argv
  own, train_args = split_argv(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog=f"python -m {target_module.__spec__.name}",
                                   description=target_module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_spec_flags(parser, target_module.Spec)
  parser.add_argument("--output", default="", help="write the job to this file (default: print it)")
  parser.add_argument("--submit", action="store_true", help="submit the job "
                      f"({' '.join(target_module.submit_command('')[0])})")
  flags = parser.parse_args(own)
  try:
    spec = spec_from_flags(target_module.Spec, flags)
    text = emit(target_module, spec, job_lib.Job(train_args), flags.output, flags.submit)
  except ValueError as e:
    parser.error(str(e))
  except RuntimeError as e:
    print(e, file=sys.stderr)
    return 1
  if flags.output:
    print(f"wrote {flags.output}")
  elif not flags.submit:
    print(text, end="")
  return 0

"""The command every process of a job runs: `python -m phi4_jax.main` flags, checked before launch."""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from phi4_jax import configs

COORDINATION_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")


@dataclasses.dataclass(frozen=True)
class Job:
  """phi4_jax.main's flags, e.g. ("--config=experiments/pretrain.py:1b", "--workdir=/nfs/run")."""

  args: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "args", tuple(self.args))
    if not any(a.startswith("--config=") for a in self.args):
      raise ValueError(f"training flags need --config=experiments/<stage>.py:<preset>, got {list(self.args)}")
    if not self.workdir:
      raise ValueError(f"training flags need --workdir=DIR, got {list(self.args)}")
    for a in self.args:
      if a.split("=", 1)[0] in COORDINATION_FLAGS:
        raise ValueError(f"{a}: the launcher sets {', '.join(COORDINATION_FLAGS)} for each process")

  @property
  def workdir(self) -> str:
    values = [a.split("=", 1)[1] for a in self.args if a.startswith("--workdir=")]
    return values[-1] if values else ""


def make(config: str, overrides: dict | None, workdir: str) -> Job:
  """The flags for `config` (a `file.py:arg` spec) with dotted-key overrides, run in workdir."""
  return Job((*configs.config_args(config, overrides), f"--workdir={workdir}"))


def check_shared_workdir(job: Job) -> None:
  """Every host must see the workdir: an absolute path on shared storage (NFS, a GCS FUSE mount)."""
  from phi4_jax.store import workdir as workdir_lib
  workdir = job.workdir
  workdir_lib.resolve(workdir)  # refuses URLs, as every entry point does
  if not os.path.isabs(workdir) and not workdir.startswith("~"):
    raise ValueError(f"--workdir={workdir} must be an absolute path on storage every host mounts "
                     "(NFS, Lustre, a gcsfuse mount of a GCS bucket)")


def parse(job: Job) -> ml_collections.ConfigDict:
  """The config phi4_jax.main builds from these flags (its own parsing: main.parse_args)."""
  from phi4_jax import main
  try:
    return main.parse_args(job.args)[0]
  except ValueError as e:
    raise ValueError(f"training flags {list(job.args)}: {e}") from e


def check(job: Job, num_devices: int | None = None) -> ml_collections.ConfigDict:
  """Parses the flags and validates every stage of the config (against num_devices, if known)."""
  config = parse(job)
  if num_devices:
    from phi4_jax.train.config import validate
    for stage in (config[name] for name in config.stages) if "stages" in config else (config,):
      validate(stage, num_devices, check_files=False)  # the data is for the cluster's hosts to see
  return config

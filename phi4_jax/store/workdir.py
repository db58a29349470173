"""The workdir contract: what a stage's directory holds, under which names, and how to read it.

    W/config.json          the stage's full ConfigDict (written by the primary process at start)
    W/model_config.json    ModelConfig.to_json() of the params in W/checkpoints
    W/metrics.jsonl        one JSON row per logged step
    W/tensorboard/         TensorBoard event files of the same rows
    W/checkpoints/<step>/  orbax items: params, opt_state, meta, data (hf import writes params only)
    W/report.png           a recipe's curves (at the recipe's root workdir)
    W/samples.md           a recipe's closing samples of its last stage's model (root workdir)
    W/recovery.jsonl       one line per recovery (config.resume_step / skip_batches): what was skipped
    W/checkpoints_after_N/ checkpoints after step N, set aside by config.resume_step=N

Every entry point (training, `hf export`, inference, evaluation) reads a workdir through this
module. Workdirs are local paths or mounts (NFS, gcsfuse): metrics and configs are written with
plain file I/O, so URLs are refused here, once, for everyone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

from phi4_jax.model import ModelConfig, abstract_params, with_shardings
from phi4_jax.store import atomic, checkpoint

CONFIG = "config.json"
MODEL_CONFIG = "model_config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = checkpoint.CHECKPOINTS
REPORT = "report.png"
SAMPLES = "samples.md"
RECOVERY = "recovery.jsonl"


class WorkdirError(OSError):
  """The workdir cannot hold the run (not writable, or too little free space)."""


def resolve(workdir: str | os.PathLike, flag: str = "--workdir") -> str:
  """An absolute local path for `workdir` (~ expanded); a URL is refused naming `flag`."""
  workdir = os.fspath(workdir)
  if "://" in workdir:
    raise ValueError(f"{flag}={workdir}: workdirs are written with plain file I/O (metrics, "
                     "configs); mount the bucket (e.g. gcsfuse at /gcs) and pass the mount path")
  return os.path.abspath(os.path.expanduser(workdir))


def path(workdir: str | os.PathLike, name: str) -> str:
  """W/<name> for one of this module's layout names."""
  return os.path.join(resolve(workdir), name)


def check_writable(workdir: str, need_bytes: int, min_free_gb: float = 0.0) -> None:
  """Fails before training when the workdir cannot be written or lacks need_bytes of free space."""
  workdir = resolve(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per host and process: the processes of a job share the workdir, and one's remove
    # must not race another's open (a two-node SLURM job failed that way).
    probe = os.path.join(workdir, f".write_probe.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} is not writable: {e}") from e
  free = shutil.disk_usage(workdir).free
  need = max(need_bytes, int(min_free_gb * 2**30))
  if free < need:
    raise WorkdirError(f"workdir {workdir} has {free / 2**30:.2f} GiB free; the checkpoints this run keeps "
                  f"need about {need / 2**30:.2f} GiB (config.min_free_disk_gb={min_free_gb})")


def write_model_config(workdir: str, cfg: ModelConfig) -> None:
  atomic.write_text(path(workdir, MODEL_CONFIG), cfg.to_json())


def read_model_config(workdir: str) -> ModelConfig:
  config_path = path(workdir, MODEL_CONFIG)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{workdir}: no {MODEL_CONFIG} (not a phi4_jax workdir, or no stage "
                            "has started in it)")
  with open(config_path) as f:
    try:
      return ModelConfig.from_dict(json.load(f))
    except (TypeError, ValueError) as e:
      raise ValueError(f"{config_path}: {e}") from e


def write_config(workdir: str, config) -> None:
  """W/config.json: the stage's ConfigDict, for humans and for `launch.sweep --summary`."""
  atomic.write_text(path(workdir, CONFIG), config.to_json_best_effort(indent=1))


def restore_params(workdir: str, step: int | None = None, shardings=None,
                   cfg: ModelConfig | None = None) -> tuple[ModelConfig, dict]:
  """(cfg, params) of W's latest (or given) checkpoint: numpy arrays, or jax arrays on `shardings`.

  cfg: the model the params are for (default: W/model_config.json); its param_dtype is the dtype
  they come back in, and its shapes must match the checkpoint's.
  """
  cfg = read_model_config(workdir) if cfg is None else cfg
  abstract = abstract_params(cfg)
  if shardings is not None:
    abstract = with_shardings(abstract, shardings)
  return cfg, checkpoint.restore_params(workdir, abstract, step)

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
    W/.lock.process_<i>    held by process i of the run using W (`locked`): a second run is refused

Every entry point (training, `hf export`, inference, evaluation) reads a workdir through this
module. Workdirs are local paths or mounts (NFS, gcsfuse): metrics and configs are written with
plain file I/O, so URLs are refused here, once, for everyone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time

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


def _bytes_under(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
             if not os.path.islink(os.path.join(root, name)))


def check_writable(workdir: str, need_bytes: int, min_free_gb: float = 0.0) -> None:
  """Fails before training when the workdir cannot be written or lacks the free space its
  checkpoints will take: need_bytes in all, of which the checkpoints already in W/checkpoints
  count (a rerun after a full disk needs room for the new ones only, not for those it keeps)."""
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
  need = max(need_bytes - _bytes_under(os.path.join(workdir, CHECKPOINTS)), int(min_free_gb * 2**30))
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


LOCK_HEARTBEAT_S = 30.0  # a held lock's file is touched this often
LOCK_STALE_S = 300.0  # a lock file untouched this long belongs to a dead run (on any host)
JOB_ID_VARS = ("PHI4_JAX_JOB_ID", "SLURM_JOB_ID")  # a cluster job's id, the same across its restarts


def _job_id() -> str:
  return next((os.environ[v] for v in JOB_ID_VARS if os.environ.get(v)), "")


def _stale(lock: str, holder: dict) -> bool:
  """The holder is gone: an earlier run of this cluster job (requeued or restarted), its pid is
  dead on this host, or its heartbeat stopped (another host)."""
  if holder.get("job") and holder.get("job") == _job_id():
    return True
  if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
    return not atomic.process_alive(holder["pid"])
  try:
    return time.time() - os.path.getmtime(lock) > LOCK_STALE_S
  except OSError:
    return True


def _heartbeat(lock: str, stop: threading.Event) -> None:
  while not stop.wait(LOCK_HEARTBEAT_S):
    with contextlib.suppress(OSError):
      os.utime(lock)


@contextlib.contextmanager
def locked(workdir: str, process_index: int = 0, process_count: int = 1):
  """Holds W/.lock.process_<i> while the block runs: a second run on W (any of its processes) is
  refused with WorkdirError naming the holder. A lock left by a killed run is taken over: one of
  an earlier run of the same cluster job (JOB_ID_VARS: a SLURM requeue, a JobSet restart), on this
  host when its pid is gone, from another host when its heartbeat (the file's mtime, touched every
  LOCK_HEARTBEAT_S) is older than LOCK_STALE_S."""
  workdir = resolve(workdir)
  lock = os.path.join(workdir, f".lock.process_{process_index}")
  me = {"host": socket.gethostname(), "pid": os.getpid(), "process_index": process_index,
        "process_count": process_count, "since": time.strftime("%Y-%m-%d %H:%M:%S"), "job": _job_id()}
  took_over, created = False, not os.path.exists(workdir)
  while True:
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(lock, encoding="utf-8") as f:
          holder = json.load(f)
      except (OSError, ValueError):
        holder = {}
      if _stale(lock, holder) and not took_over:
        atomic.remove(lock)  # (a killed run's; a second run taking it over at once wins or is refused)
        took_over = True
        continue
      raise WorkdirError(f"workdir {workdir} is in use by another run: {holder.get('host', '?')} pid "
                         f"{holder.get('pid', '?')} (process {holder.get('process_index', '?')} of "
                         f"{holder.get('process_count', '?')}, since {holder.get('since', '?')}); stop it, or "
                         f"remove {lock} if that run is dead") from None
    except OSError as e:
      raise WorkdirError(f"workdir {workdir} is not writable: {e}") from e
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(me, f)
    break
  stop = threading.Event()
  threading.Thread(target=_heartbeat, args=(lock, stop), daemon=True).start()
  try:
    yield lock
  finally:
    stop.set()
    atomic.remove(lock)
    if created:  # a run refused before it wrote anything leaves no workdir behind
      with contextlib.suppress(OSError):
        os.rmdir(workdir)

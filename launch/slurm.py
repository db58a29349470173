"""An sbatch script: one task per node, all its GPUs per process, the coordinator on the first node.

python -m launch.slurm --nodes=4 --gpus_per_node=8 --partition=gpu -- \
    --config=experiments/pretrain.py:1b --workdir=/nfs/runs/1b          # prints the script
... --submit                                                            # or pipes it to sbatch
"""

from __future__ import annotations

import dataclasses
import os
import sys

from launch import cluster, local, render
from launch.job import Job

SUFFIX = ".sbatch"
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Spec:
  nodes: int = cluster.option(1, "nodes; one process per node")
  gpus_per_node: int = cluster.option(8, "GPUs per node, all driven by that node's process; 0: a "
                                      "CPU job (no GRES request; one device per process unless "
                                      "XLA_FLAGS sets --xla_force_host_platform_device_count)")
  job_name: str = cluster.option("phi4", "sbatch --job-name")
  partition: str = cluster.option("", "sbatch --partition ('' = the cluster's default)")
  account: str = cluster.option("", "sbatch --account ('' = none)")
  time: str = cluster.option("24:00:00", "sbatch --time limit")
  signal_s: int = cluster.option(300, "seconds before the time limit at which training checkpoints, "
                                 "exits and requeues the job (sbatch --signal=B:USR1@N --requeue)")
  log_file: str = cluster.option("slurm-%x-%j.out", "sbatch --output: the log of every task")
  port: int = cluster.option(0, "coordinator port (0 = derived from the job id, as JAX does)")
  repo_dir: str = cluster.option(REPO_DIR, "this repository on storage every node mounts")
  python: str = cluster.option(sys.executable, "interpreter with phi4_jax installed, on storage "
                               "every node mounts (default: this one)")
  setup: str = cluster.option("", "shell lines run before training, e.g. 'source ~/venv/bin/activate'")

  def __post_init__(self):
    cluster.check_positive(self, "nodes")
    cluster.check_positive(self, "signal_s")
    if self.gpus_per_node < 0:
      raise ValueError(f"--gpus_per_node must be >= 0 (0: a CPU job), got {self.gpus_per_node}")


def devices(spec: Spec) -> int:
  """Accelerators in the job: its GPUs, or for a CPU job each process's host devices (set by
  XLA_FLAGS in this environment, which sbatch passes on, or in --setup)."""
  if spec.gpus_per_node:
    return spec.nodes * spec.gpus_per_node
  return spec.nodes * local.host_device_count(f"{os.environ.get('XLA_FLAGS', '')} {spec.setup}")


def named(spec: Spec, name: str) -> Spec:
  return dataclasses.replace(spec, job_name=name)


def render_job(spec: Spec, job: Job) -> str:
  extra = [f"#SBATCH --{key}={value}" for key, value in (("gpus-per-node", spec.gpus_per_node),
           ("partition", spec.partition), ("account", spec.account)) if value]
  port = spec.port or "$(( SLURM_JOB_ID % 4096 + 61440 ))"
  return render.render("slurm.sbatch", {
      "job_name": spec.job_name, "nodes": spec.nodes, "signal_s": spec.signal_s,
      "time": spec.time, "log_file": spec.log_file, "sbatch_extra": "\n".join(extra), "port": port,
      **render.process_values(spec, job)})


def submit_command(text: str) -> tuple[list[str], str]:
  """sbatch reads the script from stdin."""
  return ["sbatch"], text


if __name__ == "__main__":
  sys.exit(cluster.main(sys.modules[__name__]))

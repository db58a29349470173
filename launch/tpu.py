"""A `gcloud compute tpus tpu-vm ssh --worker=all` script: one process per TPU VM worker.

python -m launch.tpu --tpu_name=my-v5p-32 --zone=us-east5-a -- \
    --config=experiments/pretrain.py:1b --workdir=/gcs/runs/1b           # prints the script
... --submit                                                            # or runs it

Each worker reads its process id and the coordinator (worker 0) from the TPU VM metadata server.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys

from launch import cluster, render
from launch.job import Job

SUFFIX = ".sh"


@dataclasses.dataclass(frozen=True)
class Spec:
  tpu_name: str = cluster.option(cluster.REQUIRED, "the TPU VM (pod slice) name")
  zone: str = cluster.option(cluster.REQUIRED, "its zone, e.g. us-east5-a")
  project: str = cluster.option("", "GCP project ('' = gcloud's default)")
  port: int = cluster.option(8482, "coordinator port on worker 0")
  repo_dir: str = cluster.option("~/phi4_jax", "this repository on every worker")
  python: str = cluster.option("python3", "interpreter with phi4_jax installed on every worker")
  setup: str = cluster.option("", "shell lines run on every worker before training")
  chips: int = cluster.option(0, "TPU chips in the slice, to check the config (0 = unchecked)")


def devices(spec: Spec) -> int | None:
  return spec.chips or None


def named(spec: Spec, name: str) -> Spec:
  del name  # the slice has no job names: points run one after another on it
  return spec


def render_worker(spec: Spec, job: Job) -> str:
  """The script each worker runs."""
  return render.render("tpu_worker.sh", {"port": spec.port, "tpu_name": spec.tpu_name,
                                         **render.process_values(spec, job)})


def render_job(spec: Spec, job: Job) -> str:
  return render.render("tpu_vm.sh", {
      "tpu_name": shlex.quote(spec.tpu_name), "zone": shlex.quote(spec.zone),
      "project": f" --project={shlex.quote(spec.project)}" if spec.project else "",
      "worker_script": render_worker(spec, job).rstrip("\n")})


def submit_command(text: str) -> tuple[list[str], None]:
  """Runs the gcloud command here (it returns when training ends on every worker)."""
  return ["bash", "-c", text], None


if __name__ == "__main__":
  sys.exit(cluster.main(sys.modules[__name__]))

"""A JobSet manifest for GKE: N pods (one per node, all its chips each), pod 0 the coordinator.

python -m launch.gke --image=us-docker.pkg.dev/p/r/phi4:latest --num_nodes=4 \
    --resource=google.com/tpu --chips_per_node=4 \
    --node_selector=cloud.google.com/gke-tpu-accelerator=tpu-v5p-slice \
    --node_selector=cloud.google.com/gke-tpu-topology=2x2x4 --gcs_bucket=my-bucket -- \
    --config=experiments/pretrain.py:1b --workdir=/gcs/runs/1b         # prints the manifest
... --submit                                                          # or kubectl apply -f -

Needs the JobSet controller in the cluster (https://jobset.sigs.k8s.io).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys

from launch import cluster, render
from launch.job import Job

SUFFIX = ".yaml"
GCS_MOUNT = "/gcs"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class Spec:
  image: str = cluster.option(cluster.REQUIRED, "container image with this repository and phi4_jax")
  name: str = cluster.option("phi4", "JobSet name (lowercase letters, digits and '-')")
  num_nodes: int = cluster.option(1, "pods = processes, one per node")
  chips_per_node: int = cluster.option(8, "accelerators each pod requests")
  resource: str = cluster.option("nvidia.com/gpu", "accelerator resource (google.com/tpu on TPU)")
  node_selector: list = cluster.option([], "key=value node label; repeat for several")
  gcs_bucket: str = cluster.option("", f"GCS bucket mounted with gcsfuse at {GCS_MOUNT} in every pod")
  namespace: str = cluster.option("default", "Kubernetes namespace")
  service_account: str = cluster.option("default", "Kubernetes service account of the pods")
  repo_dir: str = cluster.option("/app", "this repository inside the image")
  python: str = cluster.option("python", "interpreter with phi4_jax installed in the image")
  port: int = cluster.option(8476, "coordinator port on pod 0")
  max_restarts: int = cluster.option(3, "JobSet restarts of the whole job after a failure or a "
                                     "preempted node (each resumes from the last checkpoint)")

  def __post_init__(self):
    cluster.check_positive(self, "num_nodes", "chips_per_node")
    hostname = _hostname(self.name, self.num_nodes - 1)
    if not _DNS_LABEL.fullmatch(self.name) or len(hostname) > 63:
      raise ValueError(f"--name={self.name!r}: use lowercase letters, digits and '-', short enough "
                       f"that pod hostnames like {hostname!r} stay within 63 characters")
    for item in self.node_selector:
      if "=" not in item:
        raise ValueError(f"--node_selector={item!r} must be key=value")


def _hostname(name: str, index: int) -> str:
  """The hostname JobSet gives pod `index` of replicated job "workers" in JobSet `name`."""
  return f"{name}-workers-0-{index}"


def devices(spec: Spec) -> int:
  return spec.num_nodes * spec.chips_per_node


def named(spec: Spec, name: str) -> Spec:
  """spec renamed to a DNS label made from name (e.g. a sweep point's run name)."""
  label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
  room = 63 - len(_hostname("", spec.num_nodes - 1))
  if len(label) > room:
    digest = hashlib.sha1(name.encode()).hexdigest()[:6]
    label = f"{label[:room - 7].rstrip('-')}-{digest}"
  return dataclasses.replace(spec, name=label)


def _storage(spec: Spec, job: Job) -> tuple[dict, list, list]:
  """(pod annotations, volumes, volume mounts) of the gcsfuse mount, if any."""
  if not spec.gcs_bucket:
    return {}, [], []
  if not (job.workdir + "/").startswith(GCS_MOUNT + "/"):
    raise ValueError(f"--workdir={job.workdir} is outside the --gcs_bucket mount {GCS_MOUNT}; "
                     f"use e.g. --workdir={GCS_MOUNT}/runs/<name>")
  volume = {"name": "gcs", "csi": {"driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": {
      "bucketName": spec.gcs_bucket, "mountOptions": "implicit-dirs"}}}
  return ({"gke-gcsfuse/volumes": "true"}, [volume], [{"name": "gcs", "mountPath": GCS_MOUNT}])


def render_job(spec: Spec, job: Job) -> str:
  annotations, volumes, mounts = _storage(spec, job)
  command = [spec.python, "-m", "phi4_jax.main", *job.args,
             "--coordinator_address=$(COORDINATOR_ADDRESS)", "--num_processes=$(NUM_PROCESSES)",
             "--process_id=$(PROCESS_ID)"]  # Kubernetes expands $(VAR) from the env below
  y = render.yaml_value
  return render.render("jobset.yaml", {
      "name": spec.name, "namespace": y(spec.namespace), "max_restarts": spec.max_restarts,
      "num_nodes": spec.num_nodes, "annotations": y(annotations),
      "service_account": y(spec.service_account),
      "node_selector": y(dict(item.split("=", 1) for item in spec.node_selector)),
      "volumes": y(volumes), "image": y(spec.image), "repo_dir": y(spec.repo_dir),
      "command": y(command), "coordinator_address": y(f"{_hostname(spec.name, 0)}.{spec.name}:{spec.port}"),
      "limits": y({spec.resource: spec.chips_per_node}), "volume_mounts": y(mounts)})


def submit_command(text: str) -> tuple[list[str], str]:
  """kubectl reads the manifest from stdin."""
  return ["kubectl", "apply", "-f", "-"], text


if __name__ == "__main__":
  sys.exit(cluster.main(sys.modules[__name__]))

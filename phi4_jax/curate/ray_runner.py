"""Phases 1 and 3 of a curation run (curate/pipeline.py) on a Ray cluster, with Ray Data.

Each phase is a dataset of the files' indices, one block per file, mapped by a class UDF
(`map_batches`, one actor per CPU slot, spread over the nodes): an actor loads the classifier and
the benchmark index once and measures (phase 1) or writes (phase 3) one file per batch, exactly as
the in-process runner does, so the result is byte-identical whichever way it ran. The workers must
see the input files and DIR at the same paths (one machine, or a shared filesystem). Phase 2 (the
dedup over all files' band hashes) runs on the driver. The nodes that did the work are recorded in
DIR/work/ray_nodes.json.
"""

from __future__ import annotations

import json
import os
import socket

import ml_collections

from phi4_jax.curate import pipeline
from phi4_jax.store import atomic

CONNECT_TIMEOUT_S = 5.0  # how long a --ray_address may take to answer


def connect(address: str) -> None:
  """ray.init(address), after checking that HOST:PORT answers within CONNECT_TIMEOUT_S (ValueError
  naming the address otherwise; `auto` is left to Ray, which fails fast without a cluster)."""
  import ray
  if address != "auto":
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
      raise ValueError(f"--ray_address={address!r}: expected auto or HOST:PORT")
    try:
      socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
      raise ValueError(f"--ray_address={address}: no Ray cluster answers there ({e})") from None
  try:
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu"}})
  except ConnectionError as e:
    raise ValueError(f"--ray_address={address}: {e}") from None


class _Measure:
  """Phase 1 on an actor: the files of its batches, measured and saved to DIR/work."""

  def __init__(self, config: dict, files: list, out: str, cache: str):
    self.config, self.files, self.out, self.cache = ml_collections.ConfigDict(config), files, out, cache
    self.measures = pipeline.Measures(self.config, pipeline.steps_of(self.config), out)

  def __call__(self, batch: dict) -> dict:
    import ray
    for k in batch["k"].tolist():
      file = self.files[k]
      pipeline.save_measured(self.out, file, pipeline._measure_or_skip(file, self.measures, self.cache))
    return {"k": batch["k"], "node": [ray.get_runtime_context().get_node_id()] * len(batch["k"])}


class _Write:
  """Phase 3 on an actor: the clean copy and report of each file of its batches."""

  def __init__(self, out: str, jobs: list):
    self.out, self.jobs = out, jobs

  def __call__(self, batch: dict) -> dict:
    import ray
    counts = []
    for k in batch["k"].tolist():
      file, removed = self.jobs[k]
      counts.append(json.dumps(pipeline.finished(self.out, file) or pipeline.write_file(
          self.out, file, pipeline.load_measured(self.out, file), removed)))
    return {"k": batch["k"], "counts": counts, "node": [ray.get_runtime_context().get_node_id()] * len(counts)}


class Ray:
  """The runner: pipeline.run(..., runner=Ray("auto"))."""

  def __init__(self, address: str):
    import ray
    connect(address)
    self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    self.nodes: set[str] = set()

  def _map(self, udf, kwargs: dict, n: int) -> list[dict]:
    import ray
    ds = ray.data.from_items([{"k": k} for k in range(n)], override_num_blocks=n)
    rows = ds.map_batches(udf, fn_constructor_kwargs=kwargs, batch_size=1, concurrency=min(self.slots, n),
                          num_cpus=1, scheduling_strategy="SPREAD").take_all()
    self.nodes.update(r["node"] for r in rows)
    return sorted(rows, key=lambda r: r["k"])

  def measure(self, config, files: list, out: str, cache: str) -> None:
    if files:
      self._map(_Measure, dict(config=config.to_dict(), files=files, out=out, cache=cache), len(files))
      self._record(out)

  def write(self, out: str, jobs: list[tuple]) -> list[dict]:
    if not jobs:
      return []
    rows = self._map(_Write, dict(out=out, jobs=[(file, removed) for file, _, removed in jobs]), len(jobs))
    self._record(out)
    return [json.loads(r["counts"]) for r in rows]

  def _record(self, out: str) -> None:
    os.makedirs(os.path.join(out, pipeline.WORK), exist_ok=True)
    atomic.write_json(os.path.join(out, pipeline.WORK, "ray_nodes.json"), sorted(self.nodes))

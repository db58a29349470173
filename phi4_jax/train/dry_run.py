"""A stage's memory and FLOP plan before launch: its train step compiled on abstract inputs.

`python -m phi4_jax.main --config=... --dry_run [--devices=N] [--device_memory_gb=G]` lowers and
compiles the train step for the configured mesh (on N fake CPU devices where no accelerator is
present) and prints, per device: parameter, optimizer-state and batch bytes, XLA's temporaries
(activations, gradients, collectives' buffers), FLOPs per step, and which devices it fits. Nothing
is allocated, no data is read and no workdir is touched.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from phi4_jax import model as model_lib
from phi4_jax.train import loop, objectives
from phi4_jax.train.config import model_config, validate

GB = 1e9
DEVICE_MEMORY_GB = {  # memory per device (HBM), in GB as the vendors count it
    "H100": 80, "H200": 141, "A100-40GB": 40, "A100-80GB": 80, "TPU v5e": 16, "TPU v5p": 95,
    "TPU v6e": 32,
}
USABLE = 0.9  # of a device's memory: the rest goes to the runtime, XLA's workspace, fragmentation


def _bytes_per_device(tree) -> int:
  """Bytes of one device's shards of a tree of sharded ShapeDtypeStructs."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict:
  """The step's global batch [M, B/M, T] (pair fields [M, B/M, pairs_per_row]) as ShapeDtypeStructs."""
  sharding = model_lib.batch_sharding(mesh, microbatched=True)
  rows = (config.microbatches, config.global_batch_size // config.microbatches)
  return objectives.get(config.objective).abstract_batch(config, rows, sharding)


def plan(config: ml_collections.ConfigDict, device_memory_gb: float = 0.0) -> dict:
  """The stage's per-device plan on this process's devices (see the module docstring)."""
  validate(config, jax.device_count(), check_init_from=False, check_files=False)
  cfg = model_config(config)
  mesh = model_lib.make_mesh(config.mesh_shape)
  optimizer, shardings, state = loop.abstract_train_state(config, cfg, mesh)
  objective = objectives.make(config, cfg, mesh)
  extras, extra_shardings = objective.objective.abstract_extras(config, state["params"], shardings["params"])
  batch = abstract_batch(config, mesh)
  step = loop.jit_step(optimizer, objective.loss_fn, shardings, mesh, extra_shardings)
  compiled = step.lower(state, batch, extras).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_device = {
      "params": _bytes_per_device(state["params"]),
      "optimizer_state": _bytes_per_device(state["opt_state"]),
      "batch": _bytes_per_device(batch),
      "reference": _bytes_per_device(extras),
      "temporaries": int(memory.temp_size_in_bytes),
  }
  per_device["total"] = sum(per_device.values())
  tokens = config.global_batch_size * config.seq_len
  # Each params-shaped extra is a frozen model the step runs forward (DPO's reference): 2N of 6N.
  frozen = sum(jax.tree.structure(v) == jax.tree.structure(state["params"]) for v in extras.values())
  memories = ({f"{device_memory_gb:g} GB": device_memory_gb} if device_memory_gb else
              {f"{name} ({gb} GB)": gb for name, gb in DEVICE_MEMORY_GB.items()})
  return {
      "stage": config.stage, "devices": jax.device_count(), "platform": jax.default_backend(),
      "dtype": cfg.dtype,
      "mesh": dict(mesh.shape), "seq_len": config.seq_len, "global_batch_size": config.global_batch_size,
      "microbatches": config.microbatches, "params": model_lib.param_count(cfg),
      "bytes_per_device": per_device,
      "xla_argument_bytes": int(memory.argument_size_in_bytes),
      "flops_per_step_per_device_xla": float(cost.get("flops", 0.0)) if cost else None,
      "frozen_forwards": frozen,
      "flops_per_step_per_device_model": model_lib.flops_per_token(cfg, config.seq_len) * tokens
                                         * (1 + frozen / 3) / jax.device_count(),
      "fits": {name: per_device["total"] <= USABLE * gb * GB for name, gb in memories.items()},
  }


def describe(result: dict) -> str:
  """The plan as a few lines of text."""
  b = result["bytes_per_device"]
  mesh = " x ".join(f"{axis}={size}" for axis, size in result["mesh"].items())
  lines = [f"dry run of stage {result['stage']}: {result['params'] / 1e9:.2f}B params, "
           f"{result['devices']} {result['platform']} devices (mesh {mesh}), "
           f"batch {result['global_batch_size']} x {result['seq_len']} in {result['microbatches']} "
           "microbatch(es)", "per device:"]
  names = {"params": "parameters", "optimizer_state": "optimizer state", "batch": "batch",
           "reference": "DPO reference", "temporaries": "XLA temporaries (activations, grads)",
           "total": "total"}
  lines += [f"  {names[k]:<38} {v / GB:9.3f} GB" for k, v in b.items() if v or k == "total"]
  xla, model = result["flops_per_step_per_device_xla"], result["flops_per_step_per_device_model"]
  frozen = f" + {result['frozen_forwards']} frozen forward(s) at a third of that" if result["frozen_forwards"] else ""
  lines.append(f"  FLOPs per step                         {model:.3e} (model: 6N + attention{frozen})"
               + (f", {xla:.3e} (XLA's count: a loop's body counts once)" if xla else ""))
  lines.append("fits (at {:.0%} of memory): ".format(USABLE) + ", ".join(
      f"{name} {'yes' if ok else 'NO'}" for name, ok in result["fits"].items()))
  if result["platform"] == "cpu" and result["dtype"] != "float32":
    lines.append(f"note: XLA on CPU computes {result['dtype']} in float32, so these temporaries are an "
                 "upper bound (up to 2x); --dry_run on the target accelerator gives its own figure")
  return "\n".join(lines)

"""Device mesh and parameter placement from the logical axis rules."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding

from phi4_jax.model.config import ModelConfig
from phi4_jax.model.transformer import logical_axes

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int,
                       names: Sequence[str] = MESH_AXES) -> tuple[int, ...]:
  """Fills at most one -1 with the devices left over; errors name the axis."""
  shape = [int(s) for s in shape]
  if len(shape) != len(names):
    raise ValueError(f"mesh shape {shape} must have one size per axis {tuple(names)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  for name, size in zip(names, shape):
    if size == 0 or size < -1:
      raise ValueError(f"mesh axis {name!r} has invalid size {size}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {shape}: {num_devices} devices are not divisible by {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh shape {dict(zip(names, shape))} needs {math.prod(shape)} devices, "
                     f"but {num_devices} are available")
  return tuple(shape)


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh(data, fsdp, tensor) over all (or the given) devices; one size may be -1."""
  devices = list(jax.devices() if devices is None else devices)
  resolved = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(resolved, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> dict:
  """NamedSharding of every parameter under cfg.axis_rules."""
  return nn.logical_to_mesh_sharding(logical_axes(cfg), mesh, cfg.axis_rules)


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh) -> dict:
  """Places (or moves) params onto the mesh by the rules table."""
  return jax.device_put(params, param_shardings(cfg, mesh))


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs of `abstract` placed on `shardings` (a tree of the same structure)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def batch_sharding(mesh: Mesh, microbatched: bool = False) -> NamedSharding:
  """Inputs [B, T] (or [M, B, T] with microbatched): batch split over data x fsdp, the rest replicated."""
  spec = (None, ("data", "fsdp"), None) if microbatched else (("data", "fsdp"), None)
  return NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

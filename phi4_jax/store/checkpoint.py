"""Orbax checkpoints under W/checkpoints: params, opt_state, run metadata and the data iterator.

Each step directory holds separate items so a later stage can read `params` alone (the stage
hand-off) and `hf import` can write a checkpoint that has nothing but params.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

CHECKPOINTS = "checkpoints"  # in a workdir: the orbax CheckpointManager directory


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  """W/checkpoints as an absolute path (orbax refuses relative ones; store.workdir refuses URLs)."""
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir)))) / CHECKPOINTS


def latest_step(workdir: str | os.PathLike) -> int | None:
  """The newest finished step under W/checkpoints, or None."""
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    return None
  return ocp.CheckpointManager(directory).latest_step()


def manager(workdir: str | os.PathLike, max_to_keep: int | None = None, async_save: bool = True,
            keep_period: int | None = None) -> ocp.CheckpointManager:
  """max_to_keep newest steps (None: all), plus every multiple of keep_period; a save's leftover
  temporary directory (a crash or a full disk mid-save) is removed when the manager opens."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period or None,
                                         create=True, enable_async_checkpointing=async_save,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def all_steps(workdir: str | os.PathLike) -> list[int]:
  """The finished steps under W/checkpoints, oldest first."""
  directory = checkpoint_dir(workdir)
  return sorted(ocp.CheckpointManager(directory).all_steps()) if directory.exists() else []


def read_meta(workdir: str | os.PathLike, step: int) -> dict:
  """A step's `meta` item (run metadata) without restoring anything else; {} if unreadable."""
  path = checkpoint_dir(workdir) / str(step) / "meta" / "metadata"
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def set_aside(workdir: str | os.PathLike, after_step: int) -> str | None:
  """Moves the step directories past after_step out of W/checkpoints into a new
  W/checkpoints_after_<after_step>[_k] (kept, never deleted); returns that folder, or None."""
  later = [s for s in all_steps(workdir) if s > after_step]
  if not later:
    return None
  root = os.fspath(checkpoint_dir(workdir))
  target, k = f"{root}_after_{after_step}", 1
  while os.path.exists(target):
    target, k = f"{root}_after_{after_step}_{k}", k + 1
  os.makedirs(target)
  for step in later:
    shutil.move(os.path.join(root, str(step)), os.path.join(target, str(step)))
  return target


def save(mngr: ocp.CheckpointManager, step: int, state: dict, meta: dict, data_iterator: Any = None,
         force: bool = False) -> bool:
  """Starts an (async) save of the train state; the data iterator state is written synchronously."""
  items = {"params": ocp.args.StandardSave(state["params"]),
           "opt_state": ocp.args.StandardSave(state["opt_state"]),
           "meta": ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    import grain  # (here: reading params needs no grain)
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: dict,
            data_iterator: Any = None) -> tuple[dict, dict]:
  """(params + opt_state placed by abstract_state's shardings, meta); restores data_iterator in place."""
  items = {"params": ocp.args.StandardRestore(abstract_state["params"]),
           "opt_state": ocp.args.StandardRestore(abstract_state["opt_state"]),
           "meta": ocp.args.JsonRestore()}
  if data_iterator is not None:
    import grain
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  state = {"params": restored["params"], "opt_state": restored["opt_state"],
           "step": restored["meta"]["step"]}
  return state, restored["meta"]


def _params_manager(workdir: str | os.PathLike) -> ocp.CheckpointManager:
  """A manager that can read the `params` item alone (and its metadata) without the others."""
  handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
  handlers.add("params", ocp.args.PyTreeRestore)
  # Known (but not read) so that orbax does not warn about each item it cannot restore.
  handlers.add("opt_state", ocp.args.StandardRestore)
  handlers.add("meta", ocp.args.JsonRestore)
  handlers.add("data", ocp.args.JsonRestore)  # (grain's item, never read here)
  return ocp.CheckpointManager(checkpoint_dir(workdir), handler_registry=handlers)


def _check_shapes(where: str, stored: Any, abstract_params: dict) -> None:
  """Names the first parameter missing from, or shaped differently in, the checkpoint."""
  stored_shapes = {jax.tree_util.keystr(k): tuple(v.shape)
                   for k, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    name = jax.tree_util.keystr(path)
    if name not in stored_shapes:
      raise ValueError(f"{where}: the checkpoint has no parameter {name}")
    if stored_shapes[name] != tuple(leaf.shape):
      raise ValueError(f"{where}: parameter {name} has shape {stored_shapes[name]} in the checkpoint, "
                       f"but this model needs {tuple(leaf.shape)}")


def _pick_step(workdir: str | os.PathLike, steps, step: int | None) -> int:
  """`step`, or the newest of `steps` when None; raises naming the workdir if there is none."""
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
  step = max(steps) if step is None else int(step)
  if step not in steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint for step {step} (has {sorted(steps)})")
  return step


def check_params(workdir: str | os.PathLike, abstract_params: dict, step: int | None = None) -> int:
  """The step restore_params would read, after checking its params exist and fit abstract_params
  (metadata only: nothing is restored)."""
  with _params_manager(workdir) as mngr:
    step = _pick_step(workdir, mngr.all_steps(), step)
    where = f"{checkpoint_dir(workdir)}/{step}"
    try:
      tree = mngr.item_metadata(step)["params"].tree
    except (KeyError, AttributeError, OSError, ValueError) as e:
      raise ValueError(f"{where} holds no readable params: not a checkpoint written by phi4_jax "
                       f"({type(e).__name__}: {e})") from None
    _check_shapes(where, tree, abstract_params)
  return step


def restore_params(workdir: str | os.PathLike, abstract_params: dict, step: int | None = None) -> dict:
  """Only the params of W's latest (or given) checkpoint, cast to abstract_params' dtypes.

  Leaves with a `sharding` come back as jax arrays placed (resharded) on it; leaves without one
  come back as numpy arrays on the host.
  """
  with _params_manager(workdir) as mngr:
    step = _pick_step(workdir, mngr.all_steps(), step)
    _check_shapes(f"{checkpoint_dir(workdir)} step {step}", mngr.item_metadata(step)["params"].tree,
                  abstract_params)
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype)
        if getattr(a, "sharding", None) is not None else ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype),
        abstract_params)
    restored = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeRestore(restore_args=restore_args)))
  return restored["params"]


class ParamReader:
  """The params of one checkpoint step, read one leaf, or one part of a leaf, at a time.

  Nothing is restored up front: each leaf's tensorstore array is opened on first use (metadata
  only), and `read` decodes only the storage chunks its index touches: one layer of a stacked
  leaf that `hf import` wrote, up to a per-device shard (at most 2 GiB, orbax's OCDBT file size)
  of one that training wrote. A cache that holds the largest chunk lets consecutive reads inside
  one chunk (row blocks of a training-written embedding) decode it once. Memory stays near the
  part read plus one chunk, not the param tree.
  """

  def __init__(self, workdir: str | os.PathLike, abstract_params: dict, step: int | None = None):
    import tensorstore as ts
    with _params_manager(workdir) as mngr:
      self.step = _pick_step(workdir, mngr.all_steps(), step)
      metadata = mngr.item_metadata(self.step)["params"]
    self.where = f"{checkpoint_dir(workdir)} step {self.step}"
    _check_shapes(self.where, metadata.tree, abstract_params)
    self._leaves = traverse_util.flatten_dict(metadata.tree, sep="/")
    self.dtypes = {path: np.dtype(a.dtype)
                   for path, a in traverse_util.flatten_dict(abstract_params, sep="/").items()}
    self._use_zarr3 = metadata.use_zarr3
    directory = next(iter(self._leaves.values())).directory
    self._use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(directory)
    # Room for the largest decoded chunk (with a limit of exactly one chunk it was still decoded
    # again for each row block of an export).
    chunk_bytes = max(_chunk_bytes(leaf) for leaf in self._leaves.values())
    cache = ts.Context.Spec({"cache_pool": {"total_bytes_limit": chunk_bytes + chunk_bytes // 16}})
    self._context = ts.Context(
        cache, parent=ocp.type_handlers.get_ts_context(use_ocdbt=self._use_ocdbt))
    self._stores = {}  # path -> its opened tensorstore array

  def _store(self, path: str):
    import tensorstore as ts  # (here and in __init__: reading whole params needs no tensorstore)
    if path not in self._stores:
      leaf = self._leaves[path]
      info = ocp.type_handlers.ParamInfo(name=leaf.name, parent_dir=epath.Path(leaf.directory),
                                         use_zarr3=self._use_zarr3, ts_context=self._context)
      spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self._use_ocdbt)
      self._stores[path] = ts.open(spec, open=True, read=True, context=self._context).result()
    return self._stores[path]

  def read(self, path: str, index: tuple = ()) -> np.ndarray:
    """Leaf `path` ("layers/attn/q/kernel") at `index` (e.g. (layer,)), in abstract_params' dtype."""
    if path not in self.dtypes:
      raise KeyError(f"{self.where}: no parameter {path} in this model")
    value = self._store(path)[index].read().result()
    return value.astype(self.dtypes[path], copy=False)


def _chunk_bytes(leaf: Any) -> int:
  """Bytes of one storage chunk of a stored leaf (the whole leaf when orbax recorded no chunks)."""
  storage = getattr(leaf, "storage", None)
  shape = storage.chunk_shape if storage is not None and storage.chunk_shape else leaf.shape
  return int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize

"""Streams HF safetensors into an orbax checkpoint without holding the model in memory.

Each parameter is saved by orbax's own PyTreeCheckpointHandler (so metadata, OCDBT layout and
commit markers are the normal ones), but its leaves are `PendingLeaf` placeholders: a custom
TypeHandler creates each leaf's tensorstore and fills it chunk by chunk straight from the
safetensors files. Stacked leaves use one chunk per layer and are filled layer by layer; the
embeddings and lm_head use chunks of about mapping.BLOCK_BYTES filled from row blocks of the HF
tensor. The handler reports the type "np.ndarray", so the checkpoint is indistinguishable from a
numpy save (and `hf export` later reads it back one chunk-sized piece at a time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import traverse_util

from phi4_jax.hf.mapping import HfTensor, block_rows, row_blocks
from phi4_jax.hf.safetensors_io import SafetensorsReader, refuse_overflow


class PendingLeaf:
  """Stands in for one parameter in the saved tree: its shape, dtype and chunk shape."""

  def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, chunk_shape: tuple[int, ...]):
    self.path, self.shape, self.dtype, self.chunk_shape = path, shape, np.dtype(dtype), chunk_shape
    self.nbytes = math.prod(shape) * self.dtype.itemsize


def chunk_shapes(tensors: Sequence[HfTensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
  """The chunk shape of every leaf, matching the handler's writes so no chunk is rewritten."""
  chunks = {}
  for t in tensors:
    for p in t.pieces:
      shape = shapes[p.path]
      if p.layer is not None:
        chunks[p.path] = (1, *shape[1:])
      else:
        chunks[p.path] = tuple(block_rows(t) if axis == p.rows_axis else n
                               for axis, n in enumerate(shape))
  return chunks


class _StreamingHandler(ocp.type_handlers.NumpyHandler):
  """Serializes PendingLeaf values by converting the HF tensors chunk by chunk."""

  def __init__(self, reader: SafetensorsReader, tensors: Sequence[HfTensor]):
    super().__init__()
    self._reader, self._tensors = reader, tensors

  async def serialize(self, values: Sequence[PendingLeaf], infos: Sequence[ocp.type_handlers.ParamInfo],
                      args: Sequence[ocp.type_handlers.SaveArgs] | None = None):
    args = args or [ocp.type_handlers.SaveArgs()] * len(values)
    return [ocp.future.CommitFutureAwaitingContractedSignals(
        self._write(values, infos, args), name="hf_import")]

  async def _write(self, values: Sequence[PendingLeaf], infos: Sequence[ocp.type_handlers.ParamInfo],
                   args: Sequence[ocp.type_handlers.SaveArgs]) -> None:
    stores, dtypes = {}, {}
    for leaf, info, arg in zip(values, infos, args):
      await info.await_path_creation()
      spec = ocp.type_handlers.get_json_tspec_write(
          info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=leaf.shape,
          local_shape=leaf.chunk_shape, dtype=leaf.dtype, arg=arg,
          process_index=jax.process_index() if info.is_ocdbt_checkpoint else None)
      stores[leaf.path] = await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context)
      dtypes[leaf.path] = leaf.dtype
    for t in self._tensors:
      for start, stop in row_blocks(t):
        block = self._reader.read(t.name, start, stop)
        for p in t.pieces:
          with np.errstate(over="ignore"):  # an overflow is refused just below
            values = p.take(block).astype(dtypes[p.path], copy=False)
          if block.dtype != dtypes[p.path]:
            refuse_overflow(values, f"{self._reader.tensors[t.name].file}: tensor {t.name}, as "
                                    f"{p.path},")
          await stores[p.path][p.index(start, stop)].write(values)
          del values
        del block  # before the next read, so two blocks are never alive together


def save_streaming(directory: str, step: int, reader: SafetensorsReader, tensors: Sequence[HfTensor],
                   shapes: dict[str, tuple[int, ...]], dtype: np.dtype) -> None:
  """Writes checkpoint `step` under the CheckpointManager `directory` with one item, `params`."""
  chunks = chunk_shapes(tensors, shapes)
  tree = traverse_util.unflatten_dict(
      {path: PendingLeaf(path, shape, dtype, chunks[path]) for path, shape in shapes.items()}, sep="/")
  type_registry = ocp.type_handlers.create_type_handler_registry(
      (PendingLeaf, _StreamingHandler(reader, tensors)))
  handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
  handlers.add("params", ocp.args.PyTreeSave,
               ocp.PyTreeCheckpointHandler(type_handler_registry=type_registry))
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(directory, options=options, handler_registry=handlers) as mngr:
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.PyTreeSave(tree)), force=True)
    mngr.wait_until_finished()

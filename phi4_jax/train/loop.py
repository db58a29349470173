"""The training loop of one stage: build, resume or hand off, step, log, checkpoint."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from phi4_jax import data as data_lib
from phi4_jax import model as model_lib
from phi4_jax.data.packing import ROW_FIELDS
from phi4_jax.train import checkpoint, metrics as metrics_lib, workdir as workdir_lib
from phi4_jax.train.config import model_config, validate
from phi4_jax.train.optimizer import lr_schedule, make_optimizer
from phi4_jax.train.step import train_step


class NonFiniteLossError(FloatingPointError):
  pass


def _state_shardings(abstract_opt_state, param_shardings: dict, mesh) -> dict:
  """Optimizer-state subtrees shaped like the params get the params' shardings; the rest replicate."""
  replicated = NamedSharding(mesh, PartitionSpec())
  params_def = jax.tree.structure(param_shardings)
  is_params_like = lambda x: not isinstance(x, jax.ShapeDtypeStruct) and jax.tree.structure(x) == params_def
  opt_shardings = jax.tree.map(lambda x: param_shardings if is_params_like(x) else replicated,
                               abstract_opt_state, is_leaf=is_params_like)
  return {"params": param_shardings, "opt_state": opt_shardings, "step": replicated}


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _state_bytes(abstract_state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))


class _Preemption:
  """Turns SIGTERM (or a first Ctrl-C) into a flag the loop checks between steps (then saves and
  exits); a second Ctrl-C interrupts at once."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
      self._previous = {}
    return self

  def _handle(self, signum, _):
    self.requested = True
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

  def __exit__(self, *_):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def agreed(self) -> bool:
    """True on every process once any process got SIGTERM."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))


def _global_batch(local: dict, microbatches: int, sharding: NamedSharding, global_rows: int) -> dict:
  """Process-local [B_local, T] numpy rows -> global [M, B/M, T] arrays sharded over data x fsdp."""
  out = {}
  for name in ROW_FIELDS:
    x = np.asarray(local[name], np.int32)
    x = x.reshape(microbatches, x.shape[0] // microbatches, x.shape[1])
    out[name] = jax.make_array_from_process_local_data(
        sharding, x, (microbatches, global_rows // microbatches, x.shape[2]))
  return out


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) one stage in `workdir`; returns a summary of the run."""
  validate(config, jax.device_count())
  cfg = model_config(config)
  mesh = model_lib.make_mesh(config.mesh_shape)
  optimizer = make_optimizer(config.optimizer, config.steps)
  schedule = lr_schedule(config.optimizer, config.steps)
  primary = jax.process_index() == 0

  param_shardings = model_lib.param_shardings(cfg, mesh)
  abstract_params = model_lib.abstract_params(cfg)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  shardings = _state_shardings(abstract_opt, param_shardings, mesh)
  abstract_state = _with_shardings(
      {"params": abstract_params, "opt_state": abstract_opt,
       "step": jax.ShapeDtypeStruct((), jnp.int32)}, shardings)
  kept = config.keep_checkpoints or 2  # (0 keeps all: at least the one written and the one before)
  workdir_lib.check_writable(workdir, (kept + 1) * _state_bytes(abstract_state), config.min_free_disk_gb)
  if primary:
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_model_config(workdir, cfg)

  data_iter = data_lib.make_train_iterator(config, jax.process_index(), jax.process_count())
  source_names = list(data_iter.source_names)
  mngr = checkpoint.manager(workdir, config.keep_checkpoints or None, config.async_checkpointing)
  resume_step = mngr.latest_step()
  if resume_step is not None:
    state, saved_meta = checkpoint.restore(mngr, resume_step, abstract_state, data_iter)
    if saved_meta["seed"] != config.seed:
      raise ValueError(f"config.seed: {workdir} was trained with seed {saved_meta['seed']}; resuming "
                       f"with {config.seed} would change the data order (use a new workdir)")
    state["step"] = jax.device_put(jnp.int32(state["step"]), shardings["step"])
    logging.info("resumed %s from step %d", workdir, resume_step)
  else:
    if config.init_from:
      params = checkpoint.restore_params(config.init_from, abstract_state["params"],
                                         None if config.init_step < 0 else config.init_step)
    else:
      init = jax.jit(model_lib.init, static_argnums=0, out_shardings=param_shardings)
      params = init(cfg, jax.random.key(config.seed))
    opt_state = jax.jit(optimizer.init, out_shardings=shardings["opt_state"])(params)
    state = {"params": params, "opt_state": opt_state,
             "step": jax.device_put(jnp.int32(0), shardings["step"])}
  start = int(state["step"])

  batch_sharding = model_lib.batch_sharding(mesh, microbatched=True)
  step_fn = jax.jit(
      functools.partial(train_step, optimizer=optimizer, cfg=cfg, num_sources=len(source_names),
                        loss_chunk=config.loss_chunk, mesh=mesh),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
      donate_argnums=0)

  tokens_per_step = config.global_batch_size * config.seq_len
  flops = model_lib.flops_per_token(cfg, config.seq_len)
  peak = metrics_lib.peak_flops_per_device(config.peak_flops_per_device)
  writer = metrics_lib.MetricsWriter(workdir, enabled=primary, tensorboard=config.tensorboard)
  bar = metrics_lib.ProgressBar(config.steps, start, tokens_per_step) if primary else None
  meta = lambda s: {"step": s, "seed": config.seed, "stage": config.stage, "source_names": source_names}
  window = _new_window()
  last_row: dict = {}
  preempted = False
  step = start
  try:
    with _Preemption() as preemption:
      while step < config.steps:
        if preemption.agreed():
          preempted = True
          break
        local_batch = next(data_iter, None)
        if local_batch is None:
          raise RuntimeError(
              f"the data ran out before step {step + 1} of {config.steps} (every source of "
              "config.data.sources used up its planned epochs: check their max_epochs and declared "
              f"unique_tokens); the last checkpoint of {workdir} is step {mngr.latest_step()}")
        batch = _global_batch(local_batch, config.microbatches, batch_sharding, config.global_batch_size)
        state, m = step_fn(state, batch)
        m = jax.device_get(m)
        step += 1
        if not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"]))):
          raise NonFiniteLossError(
              f"non-finite loss ({m['loss']}) or grad norm ({m['grad_norm']}) at step {step} of "
              f"{workdir}; the last good checkpoint (step {mngr.latest_step()}) is kept. Lower "
              "config.optimizer.peak_lr or raise warmup_steps, then rerun to resume.")
        window["steps"] += 1
        window["loss"] += float(m["loss"])
        window["src_loss"] += m["source_loss_sum"]
        window["src_tok"] += m["source_tokens"]
        if step % config.log_every == 0 or step == config.steps:
          last_row = _log_row(step, m, window, schedule, tokens_per_step, flops, peak, source_names,
                              data_iter)
          writer.write(step, last_row)
          window = _new_window()
        if bar:
          bar.update(step, f"loss {float(m['loss']):.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
          checkpoint.save(mngr, step, state, meta(step), data_iter)
      if preempted:
        if mngr.latest_step() != step:  # (it may have just been saved by checkpoint_every)
          checkpoint.save(mngr, step, state, meta(step), data_iter, force=True)
        logging.warning("SIGTERM: saved step %d of %s; rerun the same command to resume", step, workdir)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    if bar:
      bar.close()
  return {"stage": config.stage, "workdir": workdir, "start_step": start, "step": step,
          "preempted": preempted, "last": last_row}


def _new_window() -> dict:
  """Sums over the steps since the last metrics row."""
  return {"t": time.monotonic(), "steps": 0, "loss": 0.0, "src_loss": 0.0, "src_tok": 0.0}


def _log_row(step, m, window, schedule, tokens_per_step, flops, peak, source_names, data_iter) -> dict:
  elapsed = time.monotonic() - window["t"]
  tokens_per_s = window["steps"] * tokens_per_step / max(elapsed, 1e-9)
  src_tok = np.asarray(window["src_tok"])
  src_loss = np.asarray(window["src_loss"]) / np.maximum(src_tok, 1)
  row = {
      "loss": window["loss"] / window["steps"],
      "lr": float(schedule(step - 1)),
      "grad_norm": float(m["grad_norm"]),
      "tokens_per_s": tokens_per_s,
      "mfu": (flops * tokens_per_s / (peak * jax.device_count())) if peak else None,
      "loss_per_source": {n: float(src_loss[i]) for i, n in enumerate(source_names) if src_tok[i] > 0},
      "data": data_iter.progress(),
  }
  return json.loads(json.dumps(row, default=float))

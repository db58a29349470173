"""The training loop of one stage: build, resume or hand off, step, log, checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi4_jax import data as data_lib
from phi4_jax import model as model_lib
from phi4_jax.data.pairs import HOST_ONLY_FIELDS
from phi4_jax.store import checkpoint, workdir as workdir_lib
from phi4_jax.train import objectives, prefetch as prefetch_lib, preemption as preemption_lib
from phi4_jax.train import recovery, steplog
from phi4_jax.train.config import model_config, validate
from phi4_jax.train.optimizer import make_optimizer
from phi4_jax.train.step import train_step


@dataclasses.dataclass
class Run:
  """What one stage's loop is built from: its config, model, mesh, optimizer, data and checkpoints."""

  config: ml_collections.ConfigDict
  workdir: str
  cfg: model_lib.ModelConfig
  mesh: Mesh
  optimizer: optax.GradientTransformation
  shardings: dict  # params, opt_state, step
  abstract_state: dict  # ShapeDtypeStructs placed on `shardings`
  data_iter: data_lib.TrainIterator
  mngr: ocp.CheckpointManager
  objective: objectives.Bound  # config.objective with the stage's settings bound
  extras: dict  # frozen step inputs: DPO's reference params ({} otherwise)
  extra_shardings: dict
  flag_prefix: str = "--config."  # how this stage's fields are spelled on the command line
  set_aside: str | None = None  # where config.resume_step moved the later checkpoints

  @property
  def primary(self) -> bool:
    return jax.process_index() == 0

  def meta(self, step: int) -> dict:
    """The run metadata saved with each checkpoint."""
    return {"step": step, "seed": self.config.seed, "stage": self.config.stage,
            "source_names": list(self.data_iter.source_names),
            "resumed_from": self.config.resume_step}  # (recovery: a rerun does not redo it)


def state_shardings(optimizer: optax.GradientTransformation, abstract_params: dict,
                    param_shardings: dict, mesh: Mesh) -> dict:
  """Optimizer-state leaves shaped like the params get the params' shardings; the rest replicate."""
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_shardings = optax.tree_utils.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, NamedSharding))
  return {"params": param_shardings, "opt_state": opt_shardings, "step": replicated}


def abstract_train_state(config: ml_collections.ConfigDict, cfg: model_lib.ModelConfig, mesh: Mesh):
  """(optimizer, shardings, abstract state): the stage's train state as ShapeDtypeStructs placed
  on its shardings, allocating nothing."""
  optimizer = make_optimizer(config.optimizer, config.steps)
  abstract_params = model_lib.abstract_params(cfg)
  shardings = state_shardings(optimizer, abstract_params, model_lib.param_shardings(cfg, mesh), mesh)
  abstract_state = model_lib.with_shardings(
      {"params": abstract_params, "opt_state": jax.eval_shape(optimizer.init, abstract_params),
       "step": jax.ShapeDtypeStruct((), jnp.int32)}, shardings)
  return optimizer, shardings, abstract_state


def _state_bytes(abstract_state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))


def prepare(config: ml_collections.ConfigDict, workdir: str, flag_prefix: str = "--config.") -> Run:
  """Checks the config and the workdir, writes the workdir's config files, opens data and checkpoints."""
  validate(config, jax.device_count())
  workdir = workdir_lib.resolve(workdir)
  cfg = model_config(config)
  mesh = model_lib.make_mesh(config.mesh_shape)
  optimizer, shardings, abstract_state = abstract_train_state(config, cfg, mesh)
  # Sources are opened (and an unreadable file named) before anything is written to the workdir.
  data_iter = data_lib.make_train_iterator(config, jax.process_index(), jax.process_count())
  kept = config.keep_checkpoints or 2  # (0 keeps all: at least the one written and the one before)
  workdir_lib.check_writable(workdir, (kept + 1) * _state_bytes(abstract_state), config.min_free_disk_gb)
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_model_config(workdir, cfg)
  objective = objectives.make(config, cfg, mesh)
  moved = recovery.apply_resume_step(config, workdir, flag_prefix)
  mngr = checkpoint.manager(workdir, config.keep_checkpoints or None, config.async_checkpointing,
                            config.keep_period)
  run = Run(config, workdir, cfg, mesh, optimizer, shardings, abstract_state, data_iter, mngr,
            objective, {}, {}, flag_prefix, moved)
  try:  # (its frozen extras: DPO's reference)
    objective.objective.prepare(run, lambda: data_lib.make_train_iterator(
        config, jax.process_index(), jax.process_count()), batch_placer(run))
  except BaseException:
    mngr.close()
    raise
  return run


def build_or_restore_state(run: Run) -> dict:
  """The latest checkpoint of the workdir (data iterator included), else a fresh state: params
  from config.init_from (a previous stage) or a random init, and a new optimizer state."""
  config, shardings = run.config, run.shardings
  resume_step = run.mngr.latest_step()
  if resume_step is not None:
    state, saved_meta = _restore(run, resume_step)
    if saved_meta["seed"] != config.seed:
      raise ValueError(f"config.seed: {run.workdir} was trained with seed {saved_meta['seed']}; "
                       f"resuming with {config.seed} would change the data order (use a new workdir)")
    state["step"] = jax.device_put(jnp.int32(state["step"]), shardings["step"])
    logging.info("resumed %s from step %d", run.workdir, resume_step)
    recovery.skip_batches(run, resume_step, run.set_aside)
    return state
  if config.init_from:
    _, params = workdir_lib.restore_params(config.init_from, None if config.init_step < 0 else
                                           config.init_step, shardings["params"], cfg=run.cfg)
  else:
    init = jax.jit(model_lib.init, static_argnums=0, out_shardings=shardings["params"])
    params = init(run.cfg, jax.random.key(config.seed))
  opt_state = jax.jit(run.optimizer.init, out_shardings=shardings["opt_state"])(params)
  return {"params": params, "opt_state": opt_state,
          "step": jax.device_put(jnp.int32(0), shardings["step"])}


def _restore(run: Run, step: int) -> tuple[dict, dict]:
  """checkpoint.restore, with a failure named by its step directory and the way around it."""
  try:
    return checkpoint.restore(run.mngr, step, run.abstract_state, run.data_iter)
  except Exception as e:  # orbax, tensorstore, grain and json each raise their own
    earlier = [s for s in run.mngr.all_steps() if s < step]
    hint = (f"rerun with {run.flag_prefix}resume_step={max(earlier)} to resume from the previous kept "
            f"step (step {step} is then moved aside)" if earlier else "no earlier step is kept")
    raise recovery.CheckpointError(f"{checkpoint.checkpoint_dir(run.workdir)}/{step} cannot be "
                                   f"restored ({type(e).__name__}: {e}); {hint}") from e


def jit_step(optimizer: optax.GradientTransformation, loss_fn, shardings: dict, mesh: Mesh,
             extra_shardings: dict):
  """The jitted train step over `mesh`; the state is donated (updated in place)."""
  step = functools.partial(train_step, optimizer=optimizer, loss_fn=loss_fn)
  return jax.jit(step, in_shardings=(shardings, model_lib.batch_sharding(mesh, microbatched=True),
                                     extra_shardings),
                 out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())), donate_argnums=0)


def compile_step(run: Run):
  """The run's jitted train step (compiled at its first call)."""
  return jit_step(run.optimizer, run.objective.loss_fn, run.shardings, run.mesh, run.extra_shardings)


def train(config: ml_collections.ConfigDict, workdir: str, flag_prefix: str = "--config.") -> dict:
  """Runs (or resumes) one stage in `workdir`; returns a summary of the run. flag_prefix: how the
  stage's fields are named on the command line (a recipe's stage: "--config.<stage>.")."""
  run = prepare(config, workdir, flag_prefix)
  try:
    state = build_or_restore_state(run)
    summary = run_steps(run, state, compile_step(run))
  except BaseException:
    _close(run, raising=False)
    raise
  _close(run, raising=True)
  return summary


def _save(run: Run, step: int, state: dict, data_iter, force: bool = False) -> None:
  """Saves the state with data_iter's state (the data after `step`'s batch)."""
  try:
    checkpoint.save(run.mngr, step, state, run.meta(step), data_iter, force=force)
  except Exception as e:  # (an async save's error surfaces at the next save)
    raise _write_error(run, step, e) from e


def _write_error(run: Run, step: int, error: Exception) -> recovery.CheckpointError:
  found = re.search(rf"{re.escape(checkpoint.CHECKPOINTS)}/(\d+)", str(error))
  failed = int(found.group(1)) if found else step
  kept = [s for s in checkpoint.all_steps(run.workdir) if s != failed]
  return recovery.CheckpointError(
      f"writing {checkpoint.checkpoint_dir(run.workdir)}/{failed} failed: {error}. The steps already "
      f"written ({kept}) are intact; free space (or lower config.keep_checkpoints) and rerun the "
      "same command to resume from the last of them.")


def _close(run: Run, raising: bool) -> None:
  """Waits for a pending async save; its failure is raised (or, if an error is already on its way
  out, logged) as a CheckpointError naming the step."""
  try:
    run.mngr.wait_until_finished()
  except Exception as e:
    error = _write_error(run, run.mngr.latest_step() or 0, e)
    if raising:
      raise error from e
    logging.error("%s", error)
  finally:
    run.mngr.close()


def batch_placer(run: Run):
  """local rows -> the global batch [M, B/M, T] of the run's step, sharded over data x fsdp."""
  return functools.partial(_global_batch, microbatches=run.config.microbatches,
                           sharding=model_lib.batch_sharding(run.mesh, True),
                           global_rows=run.config.global_batch_size)


def _batches(run: Run) -> prefetch_lib.Prefetch:
  """The run's data read config.prefetch batches ahead and placed by batch_placer."""
  return prefetch_lib.Prefetch(run.data_iter, batch_placer(run), run.config.prefetch)


def _data_ran_out(run: Run, step: int) -> RuntimeError:
  return RuntimeError(
      f"the data ran out before step {step + 1} of {run.config.steps} (every source of "
      "config.data.sources used up its planned epochs: check their max_epochs and declared "
      f"unique_tokens); the last checkpoint of {run.workdir} is step {run.mngr.latest_step()}")


def _check_step(run: Run, step: int, m: dict, recent) -> None:
  """Stops before a diverged state can be saved; the message gives the recovery command."""
  def fail(kind, what):
    kept = sorted(run.mngr.all_steps())
    raise kind(recovery.divergence_message(what, step, run.workdir, kept, run.flag_prefix))
  recovery.check_step(float(m["loss"]), float(m["grad_norm"]), step, recent,
                      run.config.spike_factor, fail)


def run_steps(run: Run, state: dict, step_fn) -> dict:
  """Steps from the state's step to config.steps: log, checkpoint, stop cleanly on SIGTERM.

  The host never waits for a step before dispatching the next: step N's metrics are read (and
  checked for a divergence) after step N + 1 is dispatched, while it runs, and the batches are
  read and placed ahead by a thread (train/prefetch.py). A state is only saved (or evaluated)
  after its own step's metrics passed the check, so nothing past a non-finite loss is saved.
  """
  config = run.config
  start = step = int(state["step"])
  recent = recovery.new_window()
  preempted = False
  pending = None  # (step, its metrics still on the devices): read one step late

  def settle():
    """Reads, checks and logs the pending step's metrics (waiting for that step only)."""
    nonlocal pending
    if pending is not None:
      done, m = pending
      pending = None
      m = jax.device_get(m)
      _check_step(run, done, m, recent)
      logger.step(done, m)

  with _batches(run) as batches:
    logger = steplog.StepLogger(run, start, batches)
    try:
      with preemption_lib.Preemption() as preemption:
        while step < config.steps:
          if preemption.agreed(step):
            preempted = True
            break
          batch = next(batches, None)
          if batch is None:
            settle()
            raise _data_ran_out(run, step)
          dispatched = time.monotonic()
          state, m = step_fn(state, batch, run.extras)
          logger.dispatched(step + 1, ran=all(x.is_ready() for x in jax.tree.leaves(m)))
          if step == start:  # (the first call returns once the step is compiled and dispatched)
            logger.compiled(time.monotonic() - dispatched)
          step += 1
          settle()
          pending = (step, m)
          if step % config.checkpoint_every == 0 or step == config.steps:
            settle()
            _save(run, step, state, batches)
          if config.eval.every and (step % config.eval.every == 0 or step == config.steps):
            settle()
            logger.evaluation(step, _evaluate(run, state))
        settle()
        if preempted:
          if run.mngr.latest_step() != step:  # (it may have just been saved by checkpoint_every)
            _save(run, step, state, batches, force=True)
          logging.warning("%s: saved step %d of %s; rerun the same command to resume",
                          preemption.signal or "a signal to another process", step, run.workdir)
    finally:
      logger.close()
  return {"stage": config.stage, "workdir": run.workdir, "start_step": start, "step": step,
          "preempted": preempted, "last": logger.last_row}


def _evaluate(run: Run, state: dict) -> dict:
  """config.eval's tasks on the current params (every process runs them: the sampler is SPMD)."""
  from phi4_jax import eval as eval_lib
  start = time.monotonic()
  results = eval_lib.evaluate(eval_lib.Model(state["params"], run.cfg, run.mesh), run.config.eval, "config.eval")
  logging.info("eval at step %d (%.1f s): %s", int(state["step"]), time.monotonic() - start,
               json.dumps(eval_lib.flat(results)))
  return results


def _global_batch(local: dict, microbatches: int, sharding: NamedSharding, global_rows: int) -> dict:
  """Process-local [B_local, ...] numpy rows -> global [M, B/M, ...] arrays sharded over data x
  fsdp; integer fields as int32, float fields (precomputed reference log-probs) as float32."""
  out = {}
  for name, value in local.items():
    if name in HOST_ONLY_FIELDS:
      continue
    x = np.asarray(value)
    x = x.astype(np.float32 if np.issubdtype(x.dtype, np.floating) else np.int32)
    x = x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:])
    out[name] = jax.make_array_from_process_local_data(
        sharding, x, (microbatches, global_rows // microbatches, *x.shape[2:]))
  return out



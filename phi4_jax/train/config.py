"""The training fields every stage config shares, with defaults, and their validation."""

from __future__ import annotations

import ml_collections

from phi4_jax import fields
from phi4_jax.eval import settings as eval_settings
from phi4_jax.eval.settings import eval_fields
from phi4_jax.model import ModelConfig
from phi4_jax.train.objectives import FORMATS, OBJECTIVES


def optimizer_fields(**overrides) -> ml_collections.ConfigDict:
  opt = ml_collections.ConfigDict()
  opt.peak_lr = 3e-4  # AdamW peak learning rate (phi-4 pretraining: 3e-4)
  opt.warmup_steps = 100  # linear warmup length; unpublished for phi-4
  opt.end_lr_ratio = 0.0  # linear decay reaches peak_lr * end_lr_ratio on the last step
  opt.b1 = 0.9  # Adam beta1; unpublished for phi-4
  opt.b2 = 0.95  # Adam beta2; unpublished for phi-4
  opt.eps = 1e-8  # Adam epsilon
  opt.weight_decay = 0.1  # decoupled, constant (phi-4: 0.1)
  opt.decay_embeddings = True  # apply weight decay to the embedding table too
  opt.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  opt.update(overrides)
  return opt


OPTIMIZER_RULES = {
    "peak_lr": fields.number(0), "warmup_steps": fields.integer(0), "end_lr_ratio": fields.number(0, 1),
    "b1": fields.number(0, 1, high_open=True), "b2": fields.number(0, 1, high_open=True),
    "eps": fields.number(0, low_open=True), "weight_decay": fields.number(0),
    "decay_embeddings": fields.boolean(), "grad_clip_norm": fields.number(0),
}


def base_config() -> ml_collections.ConfigDict:
  """Run fields (the model, optimizer and data sub-configs are added by each stage file)."""
  c = ml_collections.ConfigDict()
  c.stage = "pretrain"  # a name for logs and the recipe summary
  c.objective = "lm"  # lm: next-token loss on loss_mask's targets (pretrain, midtrain, sft) | dpo
  c.seed = 0  # seeds parameter init and the data order
  c.steps = 1000  # optimizer steps of this stage
  c.seq_len = 4096  # tokens per packed row
  c.global_batch_size = 8  # sequences per optimizer step, over all processes
  c.microbatches = 1  # gradient accumulation: the global batch is split into this many passes
  c.mesh_shape = (1, -1, 1)  # (data, fsdp, tensor); one entry may be -1 = the remaining devices
  c.loss_chunk = 256  # sequence chunk of the fused output layer + cross-entropy; 0 = unchunked
  c.log_every = 10  # steps between metric rows
  c.checkpoint_every = 100  # steps between checkpoints (a final one is always written)
  c.keep_checkpoints = 3  # keep the newest k checkpoints; 0 keeps all
  c.async_checkpointing = True  # write checkpoints in the background
  c.prefetch = 2  # batches read and placed on the devices ahead of the step (0: read in the loop)
  c.init_from = ""  # a previous stage's workdir: start from its params, fresh optimizer state
  c.init_step = -1  # which checkpoint step of init_from; -1 = its latest
  c.peak_flops_per_device = 0.0  # for MFU; 0 = look the device up in train/metrics.py's table
  c.tensorboard = True  # also write TensorBoard event files under W/tensorboard
  c.min_free_disk_gb = 0.0  # refuse to start when the workdir has less free space (0: estimate)
  c.keep_period = 0  # also keep every checkpoint whose step is a multiple of this; 0 = none
  c.resume_step = -1  # resume from this kept step, not the latest (later ones are moved aside)
  c.skip_batches = 0  # with resume_step: batches of data skipped after the restore (past a spike)
  c.spike_factor = 0.0  # stop when a loss exceeds this x the mean of the last 20; 0 = NaN/inf only
  c.optimizer = optimizer_fields()
  c.eval = eval_fields()  # evaluation tasks run every eval.every steps (phi4_jax/eval); off by default
  return c


RUN_RULES = {
    "stage": fields.string(), "objective": fields.choice(OBJECTIVES), "seed": fields.integer(), "steps": fields.integer(1),
    "seq_len": fields.integer(1), "global_batch_size": fields.integer(1),
    "microbatches": fields.integer(1), "mesh_shape": fields.int_tuple(3), "loss_chunk": fields.integer(0),
    "log_every": fields.integer(1), "checkpoint_every": fields.integer(1),
    "keep_checkpoints": fields.integer(0), "async_checkpointing": fields.boolean(),
    "prefetch": fields.integer(0),
    "init_from": fields.string(), "init_step": fields.integer(-1), "peak_flops_per_device": fields.number(0),
    "tensorboard": fields.boolean(), "min_free_disk_gb": fields.number(0), "keep_period": fields.integer(0),
    "resume_step": fields.integer(-1), "skip_batches": fields.integer(0),
    "spike_factor": fields.number(1, low_open=True, also=(0,)),
}


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The stage's `model` (every ModelConfig field, see ModelConfig.to_config_dict) as a ModelConfig;
  a bad value raises ValueError naming config.model.<field>."""
  if "model" not in config:
    _fail("model", "missing: a stage config needs ModelConfig.preset(...).to_config_dict()")
  return ModelConfig.from_config_dict(config.model)


def _check_axis_rules(cfg: ModelConfig) -> None:
  """Every mesh axis named in cfg.axis_rules is one of the mesh's."""
  from phi4_jax.model.sharding import MESH_AXES
  for name, axes in cfg.axis_rules:
    for axis in (axes,) if isinstance(axes, str) else axes or ():
      if axis not in MESH_AXES:
        _fail("model.axis_rules", f"rule {name!r} maps to mesh axis {axis!r}; the mesh axes are "
              f"{MESH_AXES}")


def _fail(field: str, message: str) -> None:
  raise ValueError(f"config.{field}: {message}")


def _check_format(config: ml_collections.ConfigDict) -> None:
  """The stage's sources hold the records config.objective reads (objectives.FORMATS)."""
  from phi4_jax.data import stage_format
  from phi4_jax.data.planner import leaves
  kind, wanted = stage_format(config.data.sources), FORMATS[config.objective]
  if kind not in wanted:
    first = leaves(config.data.sources)[0]
    fits = [name for name, formats in FORMATS.items() if kind in formats]
    _fail("objective", f"is {config.objective!r}, which trains on {' or '.join(wanted)} records, but "
          f"{first.field}.format is {first.cfg.format!r} ({kind} records): set config.objective to "
          f"{' or '.join(map(repr, fits))}, or give the stage {' or '.join(wanted)} sources")


def _check_objective(config: ml_collections.ConfigDict) -> None:
  """The sources fit the objective; a DPO stage has its config.dpo fields and an init_from (its
  frozen reference)."""
  _check_format(config)
  if config.objective != "dpo":
    if "dpo" in config:
      _fail("dpo", f"is set, but config.objective is {config.objective!r} (set it to 'dpo')")
    return
  from phi4_jax.posttrain import dpo
  if "dpo" not in config:
    _fail("dpo", "missing: a DPO stage needs posttrain/dpo.py's dpo_fields()")
  fields.unknown(config.dpo, dpo.RULES, "config.dpo")
  fields.check(config.dpo, dpo.RULES, "config.dpo")
  if not config.init_from:
    _fail("init_from", "is empty, but a DPO stage needs one: the workdir of the model it starts from "
          "(SFT's), which is also its frozen reference")


def validate(config: ml_collections.ConfigDict, num_devices: int, check_init_from: bool = True,
             check_files: bool = True) -> None:
  """Checks values that would otherwise fail late; each message names the field.

  check_init_from=False skips looking for init_from's checkpoints (a recipe checks its later stages
  before the stage they start from has run); check_files=False skips matching the data sources'
  globs (a launcher checks a job on a machine that need not see the data).
  """
  from phi4_jax.model.sharding import resolve_mesh_shape
  from phi4_jax.store.checkpoint import check_params
  fields.unknown(config, set(base_config()) | {"model", "data", "dpo"}, "config")
  fields.unknown(config.optimizer, OPTIMIZER_RULES, "config.optimizer")
  fields.check(config, RUN_RULES, "config")
  fields.check(config.optimizer, OPTIMIZER_RULES, "config.optimizer")
  if "eval" in config:
    tasks = eval_settings.check(config.eval, "config.eval")
    if config.eval.every and not tasks:
      _fail("eval.every", f"is {config.eval.every}, but config.eval.tasks names no task")
    if config.eval.every % config.log_every:
      _fail("eval.every", f"{config.eval.every} is not a multiple of config.log_every={config.log_every} "
            "(an evaluation joins its step's metrics row)")
  cfg = model_config(config)
  _check_axis_rules(cfg)
  try:
    data, fsdp, _ = resolve_mesh_shape(config.mesh_shape, num_devices)
  except ValueError as e:
    _fail("mesh_shape", str(e))
  if config.global_batch_size % config.microbatches:
    _fail("global_batch_size", f"{config.global_batch_size} is not divisible by "
          f"config.microbatches={config.microbatches}")
  per_pass = config.global_batch_size // config.microbatches
  if per_pass % (data * fsdp):
    _fail("global_batch_size", f"{config.global_batch_size} / {config.microbatches} microbatches = "
          f"{per_pass} sequences per pass, not divisible by the data-parallel size data x fsdp = "
          f"{data * fsdp}")
  if config.seq_len > cfg.max_seq_len:
    _fail("seq_len", f"{config.seq_len} exceeds config.model.max_seq_len={cfg.max_seq_len}")
  if 0 < config.loss_chunk < config.seq_len and config.seq_len % config.loss_chunk:
    _fail("loss_chunk", f"{config.loss_chunk} does not divide config.seq_len={config.seq_len} (the "
          "loss would fall back to [B, seq_len, vocab] logits)")
  if config.init_step >= 0 and not config.init_from:
    _fail("init_step", f"is {config.init_step}, but config.init_from names no workdir to start from")
  if config.skip_batches and config.resume_step < 0:
    _fail("skip_batches", f"is {config.skip_batches}, but config.resume_step names no step to skip from")
  from phi4_jax.tokenizer import VOCAB_SIZE
  if cfg.vocab_size < VOCAB_SIZE:
    _fail("model.vocab_size", f"{cfg.vocab_size} is smaller than the tokenizer's {VOCAB_SIZE:,} ids: "
          "the data's token ids would fall outside the embedding table")
  from phi4_jax.data import check_config
  check_config(config, files=check_files)  # config.data's fields, fractions and files
  _check_objective(config)
  if check_init_from and config.init_from:
    from phi4_jax.model import abstract_params
    try:
      check_params(config.init_from, abstract_params(cfg), None if config.init_step < 0 else config.init_step)
    except (FileNotFoundError, ValueError) as e:
      raise type(e)(f"config.init_from: {e}") from None

"""The training fields every stage config shares, with defaults, and their validation."""

from __future__ import annotations

import ml_collections

from phi4_jax import fields
from phi4_jax.eval import settings as eval_settings
from phi4_jax.model import ModelConfig
from phi4_jax.train import objectives


OPTIMIZER = fields.Group(
    peak_lr=fields.Field(3e-4, fields.number(0), "AdamW peak learning rate (phi-4 pretraining: 3e-4)"),
    warmup_steps=fields.Field(100, fields.integer(0), "linear warmup length; unpublished for phi-4"),
    end_lr_ratio=fields.Field(0.0, fields.number(0, 1),
                              "linear decay reaches peak_lr * end_lr_ratio on the last step"),
    b1=fields.Field(0.9, fields.number(0, 1, high_open=True), "Adam beta1; unpublished for phi-4"),
    b2=fields.Field(0.95, fields.number(0, 1, high_open=True), "Adam beta2; unpublished for phi-4"),
    eps=fields.Field(1e-8, fields.number(0, low_open=True), "Adam epsilon"),
    weight_decay=fields.Field(0.1, fields.number(0), "decoupled, constant (phi-4: 0.1)"),
    decay_embeddings=fields.Field(True, fields.boolean(), "apply weight decay to the embedding table too"),
    grad_clip_norm=fields.Field(1.0, fields.number(0), "global-norm clipping; 0 disables"),
)
OPTIMIZER_RULES = OPTIMIZER.rules


def optimizer_fields(**overrides) -> ml_collections.ConfigDict:
  return OPTIMIZER.config(**overrides)


F = fields.Field
RUN = fields.Group(
    stage=F("pretrain", fields.string(), "a name for logs and the recipe summary"),
    objective=F("lm", fields.string(), "a registered objective (train/objectives.py): lm, next-token "
                "loss on loss_mask's targets (pretrain, midtrain, sft) | dpo"),
    seed=F(0, fields.integer(), "seeds parameter init and the data order"),
    steps=F(1000, fields.integer(1), "optimizer steps of this stage"),
    seq_len=F(4096, fields.integer(1), "tokens per packed row"),
    global_batch_size=F(8, fields.integer(1), "sequences per optimizer step, over all processes"),
    microbatches=F(1, fields.integer(1),
                   "gradient accumulation: the global batch is split into this many passes"),
    mesh_shape=F((1, -1, 1), fields.int_tuple(3),
                 "(data, fsdp, tensor); one entry may be -1 = the remaining devices"),
    loss_chunk=F(256, fields.integer(0),
                 "sequence chunk of the fused output layer + cross-entropy; 0 = unchunked"),
    log_every=F(10, fields.integer(1), "steps between metric rows"),
    checkpoint_every=F(100, fields.integer(1), "steps between checkpoints (a final one is always written)"),
    keep_checkpoints=F(3, fields.integer(0), "keep the newest k checkpoints; 0 keeps all"),
    async_checkpointing=F(True, fields.boolean(), "write checkpoints in the background"),
    prefetch=F(2, fields.integer(0),
               "batches read and placed on the devices ahead of the step (0: read in the loop)"),
    init_from=F("", fields.string(),
                "a previous stage's workdir: start from its params, fresh optimizer state"),
    init_step=F(-1, fields.integer(-1), "which checkpoint step of init_from; -1 = its latest"),
    peak_flops_per_device=F(0.0, fields.number(0),
                            "for MFU; 0 = look the device up in train/metrics.py's table"),
    tensorboard=F(True, fields.boolean(), "also write TensorBoard event files under W/tensorboard"),
    min_free_disk_gb=F(0.0, fields.number(0),
                       "refuse to start when the workdir has less free space (0: estimate)"),
    keep_period=F(0, fields.integer(0),
                  "also keep every checkpoint whose step is a multiple of this; 0 = none"),
    resume_step=F(-1, fields.integer(-1),
                  "resume from this kept step, not the latest (later ones are moved aside)"),
    skip_batches=F(0, fields.integer(0),
                   "with resume_step: batches of data skipped after the restore (past a spike)"),
    spike_factor=F(0.0, fields.number(1, low_open=True, also=(0,)),
                   "stop when a loss exceeds this x the mean of the last 20; 0 = NaN/inf only"),
    optimizer=F(OPTIMIZER, None, "AdamW with linear warmup and decay"),
    eval=F(eval_settings.FIELDS, None,
           "evaluation tasks run every eval.every steps (phi4_jax/eval); off by default"),
)
RUN_RULES = RUN.rules


def base_config() -> ml_collections.ConfigDict:
  """Run fields (the model and data sub-configs are added by each stage file)."""
  return RUN.config()


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


def _check_format(config: ml_collections.ConfigDict, objective) -> None:
  """The stage's sources hold the records the objective reads (its `formats`)."""
  from phi4_jax.data import stage_format
  from phi4_jax.data.planner import leaves
  kind, wanted = stage_format(config.data.sources), objective.formats
  if kind not in wanted:
    first = leaves(config.data.sources)[0]
    fits = [name for name, o in objectives.OBJECTIVES.items() if kind in o.formats]
    _fail("objective", f"is {config.objective!r}, which trains on {' or '.join(wanted)} records, but "
          f"{first.field}.format is {first.cfg.format!r} ({kind} records): set config.objective to "
          f"{' or '.join(map(repr, fits))}, or give the stage {' or '.join(wanted)} sources")


def _check_objective(config: ml_collections.ConfigDict) -> None:
  """config.objective is registered, the sources fit it, its settings group is there (and no other
  objective's), and its own checks pass."""
  objective = objectives.get(config.objective)
  _check_format(config, objective)
  for other in objectives.OBJECTIVES.values():
    if other.settings and other.settings != objective.settings and other.settings in config:
      _fail(other.settings, f"is set, but config.objective is {config.objective!r} "
            f"(set it to {other.name!r})")
  if objective.settings and objective.settings not in config:
    _fail(objective.settings, f"missing: a {objective.name} stage needs its settings group")
  objective.check(config)


def validate(config: ml_collections.ConfigDict, num_devices: int, check_init_from: bool = True,
             check_files: bool = True) -> None:
  """Checks values that would otherwise fail late; each message names the field.

  check_init_from=False skips looking for init_from's checkpoints (a recipe checks its later stages
  before the stage they start from has run); check_files=False skips matching the data sources'
  globs (a launcher checks a job on a machine that need not see the data).
  """
  from phi4_jax.model.sharding import resolve_mesh_shape
  from phi4_jax.store.checkpoint import check_params
  groups = {o.settings for o in objectives.OBJECTIVES.values() if o.settings}
  fields.unknown(config, set(base_config()) | {"model", "data"} | groups, "config")
  OPTIMIZER.check(config.optimizer, "config.optimizer")
  fields.check(config, RUN_RULES, "config")
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

"""AdamW with linear warmup and linear decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import ml_collections
import optax


def lr_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The LR of update `count` (0-based): step count + 1 of a linear warmup to peak_lr over
  warmup_steps, then a linear decay that reaches peak_lr * end_lr_ratio on the last step.

  Counting from 1 means the first update already moves the params (peak_lr / warmup_steps).
  """
  warmup = min(int(opt.warmup_steps), total_steps)
  by_step = optax.join_schedules(
      [optax.linear_schedule(0.0, opt.peak_lr, max(warmup, 1)),
       optax.linear_schedule(opt.peak_lr, opt.peak_lr * opt.end_lr_ratio, max(total_steps - warmup, 1))],
      boundaries=[warmup])
  return lambda count: by_step(count + 1)


def weight_decay_mask(params: dict, decay_embeddings: bool = True) -> dict:
  """True where weight decay applies: every matrix; never norm scales."""
  def decays(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[-1] == "scale":
      return False
    return decay_embeddings or names[0] != "embed"
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm > 0 else optax.identity(),
      optax.adamw(lr_schedule(opt, total_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                  weight_decay=opt.weight_decay,
                  mask=lambda p: weight_decay_mask(p, opt.decay_embeddings)),
  )

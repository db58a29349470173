"""Direct Preference Optimization on summed completion log-probs (Rafailov et al., 2023).

With d = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected), per pair:
  sigmoid: -(1 - e) * logsigmoid(beta * d) - e * logsigmoid(-beta * d)   (e = label_smoothing)
  ipo:     (d - 1 / (2 * beta)) ** 2
beta scales d once (an earlier JAX implementation applied it twice). The rewards are
beta * (policy - ref) of each completion; reward accuracy counts the pairs whose margin is
positive beyond float32 rounding. chosen_logratio and rejected_logratio (policy - ref, in nats)
show whether chosen rises: DPO can widen the margin while both fall, which the loss alone hides.

With nll_weight w > 0 each pair adds w * NLL(chosen) / len(chosen) (RPO, Pang et al. 2024; Llama 3
used w = 0.2): the chosen completion's mean token negative log-likelihood, which keeps the chosen
side likely while the margin grows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from phi4_jax import fields

LOSS_TYPES = ("sigmoid", "ipo")


FIELDS = fields.Group(
    beta=fields.Field(0.1, fields.number(0, low_open=True),
                      "scale of the implicit reward beta * (log pi - log pi_ref); phi-4's is unpublished"),
    label_smoothing=fields.Field(0.0, fields.number(0, 0.5),
                                 "e: the chance a preference label is flipped (conservative DPO)"),
    loss_type=fields.Field("sigmoid", fields.choice(LOSS_TYPES), "sigmoid (DPO) | ipo"),
    min_pairs=fields.Field(8, fields.integer(1),
                           "a pairs source with fewer usable pairs stops the stage before training"),
    nll_weight=fields.Field(0.0, fields.number(0),
                          "weight of the chosen completion's mean-token NLL added to each pair's loss (RPO)"),
  precompute_reference=fields.Field(False, fields.boolean(),
                                      "reference log-probs computed once into the workdir, not per step"),
)
RULES = FIELDS.rules


def dpo_fields(**overrides) -> ml_collections.ConfigDict:
  """`config.dpo` of a DPO stage (config.objective = "dpo")."""
  return FIELDS.config(**overrides)


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, *, beta: float, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid", nll_weight: float = 0.0,
             chosen_tokens: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """(per-pair loss, per-pair metrics: chosen/rejected rewards and log-ratios, reward margin,
  reward accuracy, the chosen NLL per token when `chosen_tokens` (each chosen completion's length)
  is given; nll_weight > 0 needs it)."""
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type: {loss_type!r} is not one of {LOSS_TYPES}")
  chosen_reward = beta * (policy_chosen - ref_chosen)
  rejected_reward = beta * (policy_rejected - ref_rejected)
  d = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
  if loss_type == "sigmoid":
    loss = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * d)
            - label_smoothing * jax.nn.log_sigmoid(-beta * d))
  else:
    loss = (d - 1.0 / (2.0 * beta)) ** 2
  extra = {}
  if chosen_tokens is not None:
    extra["chosen_nll"] = -policy_chosen / jnp.maximum(chosen_tokens, 1)
    loss = loss + nll_weight * extra["chosen_nll"]
  elif nll_weight:
    raise ValueError("nll_weight > 0 needs chosen_tokens (each chosen completion's length)")
  # A pair is ranked right when its margin exceeds float32 rounding of its log-prob sums, so that
  # policy == reference (the first step) scores 0, not a coin flip of rounding noise.
  scale = jnp.max(jnp.abs(jnp.stack([policy_chosen, policy_rejected, ref_chosen, ref_rejected])), axis=0)
  rounding = 4 * jnp.finfo(jnp.float32).eps * beta * scale
  metrics = {"chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
             "reward_margin": chosen_reward - rejected_reward, **extra,
             "chosen_logratio": policy_chosen - ref_chosen, "rejected_logratio": policy_rejected - ref_rejected,
             "reward_accuracy": (chosen_reward - rejected_reward > rounding).astype(jnp.float32)}
  return loss, metrics


def chosen_lengths(batch: dict, pairs_per_row: int) -> jax.Array:
  """Tokens [B, P] of each row's chosen completions (segment 2j+1's scored targets)."""
  from phi4_jax.model.output import target_weights
  _, weights = target_weights(batch)
  onehot_BxTxS = jax.nn.one_hot(batch["segment_ids"], 2 * pairs_per_row + 1) * weights[..., None]
  return onehot_BxTxS.sum(axis=1)[:, 1::2]


def sequence_logprobs(params: dict, batch: dict, cfg, pairs_per_row: int, mesh=None,
                      chunk: int = 256) -> tuple[jax.Array, jax.Array]:
  """Summed completion log-probs [B, P] of each row's chosen (segment 2j+1) and rejected (segment
  2j+2) sequences, from one forward over the packed row."""
  from phi4_jax import model as model_lib
  from phi4_jax.model.output import target_logprobs, target_weights
  hidden = model_lib.forward(params, batch["tokens"], cfg, segment_ids=batch["segment_ids"],
                             positions=batch["positions"], mesh=mesh, return_hidden=True)
  targets, weights = target_weights(batch)
  logp_BxT = target_logprobs(hidden, params["lm_head"]["kernel"], targets, jnp.dtype(cfg.dtype), chunk)
  onehot_BxTxS = jax.nn.one_hot(batch["segment_ids"], 2 * pairs_per_row + 1) * weights[..., None]
  sums_BxS = jnp.einsum("bt,bts->bs", logp_BxT, onehot_BxTxS)
  return sums_BxS[:, 1::2], sums_BxS[:, 2::2]


def dpo_loss_sums(params: dict, batch: dict, extras: dict, *, cfg, beta: float, label_smoothing: float,
                  loss_type: str, num_sources: int, nll_weight: float = 0.0, mesh=None,
                  chunk: int = 256) -> tuple[jax.Array, dict]:
  """The summed DPO loss over a batch's pairs and sums for metrics; the train step divides by
  sums["denominator"] (the pair count). The reference's log-probs come precomputed in the batch
  (ref_chosen, ref_rejected) or from a forward of the frozen extras["reference"] params."""
  pair_sources_BxP = batch["pair_source_ids"]
  pairs = pair_sources_BxP.shape[1]
  policy_c, policy_r = sequence_logprobs(params, batch, cfg, pairs, mesh, chunk)
  if "ref_chosen" in batch:
    ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
  else:
    ref_c, ref_r = jax.lax.stop_gradient(
        sequence_logprobs(extras["reference"], batch, cfg, pairs, mesh, chunk))
  losses_BxP, per_pair = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=beta, label_smoothing=label_smoothing,
                                  loss_type=loss_type, nll_weight=nll_weight,
                                  chosen_tokens=chosen_lengths(batch, pairs))
  valid_BxP = (pair_sources_BxP >= 0).astype(jnp.float32)
  onehot_BxPxS = jax.nn.one_hot(pair_sources_BxP, num_sources) * valid_BxP[..., None]
  sums = {"loss_sum": jnp.sum(losses_BxP * valid_BxP), "denominator": valid_BxP.sum(),
          **{name: jnp.sum(v * valid_BxP) for name, v in per_pair.items()},
          "source_loss_sum": jnp.einsum("bp,bps->s", losses_BxP, onehot_BxPxS),
          "source_pairs": onehot_BxPxS.sum(axis=(0, 1))}
  return sums["loss_sum"], sums


def read_pairs(sources: ml_collections.ConfigDict, cache_dir: str = "") -> dict[str, list[tuple]]:
  """{source name: (prompt ids, chosen ids, rejected ids) of its every usable pair, in file order}
  of `sources` (a config.data.sources of pairs sources); unusable records are left out as training
  leaves them out."""
  from phi4_jax.data import corpus, pairs as pairs_lib, planner, sources as sources_lib
  out = {}
  for leaf in planner.leaves(sources):
    source = sources_lib.open_source(leaf, corpus.cache_dir() if not cache_dir else cache_dir)
    parts = [pairs_lib.tokenize_pair(getattr(record, "value", None))
             for record in source.read(list(range(len(source))))]
    out[leaf.name] = [p for p in parts if not isinstance(p, str)]
  return out


def heldout_rewards(policy: dict, reference: dict, cfg, pairs: list[tuple], beta: float,
                    groups: dict[str, int] | None = None) -> dict:
  """Reward accuracy, mean margin and chosen and rejected log-ratios of `policy` against
  `reference` on pairs it did not train on; with `groups` ({name: how many of the pairs, in
  order}), also per group ("sources")."""
  from phi4_jax import inference
  prompts = [p for p, _, _ in pairs] * 2
  completions = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
  sums = lambda params: jnp.asarray([float(x.sum()) for x in inference.logprobs(params, cfg, prompts, completions)])
  n = len(pairs)
  policy_sums, ref_sums = sums(policy), sums(reference)
  _, m = dpo_loss(policy_sums[:n], policy_sums[n:], ref_sums[:n], ref_sums[n:], beta=beta)
  means = lambda part: {"pairs": len(range(n)[part]), **{k: float(m[k][part].mean()) for k in (
      "reward_accuracy", "reward_margin", "chosen_logratio", "rejected_logratio")}}
  out, start = means(slice(None)), 0
  if groups and len(groups) > 1:
    out["sources"] = {}
    for name, count in groups.items():
      out["sources"][name], start = means(slice(start, start + count)), start + count
  return out


class DPO:
  """dpo: config.objective's DPO (the loss above), its config.dpo settings, its frozen reference
  (init_from's params, or their log-probs precomputed into the workdir: posttrain/reference.py)."""

  name, formats, settings = "dpo", ("pairs",), "dpo"

  def check(self, config) -> None:
    FIELDS.check(config.dpo, "config.dpo")
    if not config.init_from:
      raise ValueError("config.init_from: is empty, but a DPO stage needs one: the workdir of the model "
                       "it starts from (SFT's), which is also its frozen reference")

  def loss(self, config, cfg, mesh, num_sources: int):
    d = config.dpo
    return functools.partial(dpo_loss_sums, cfg=cfg, beta=d.beta, label_smoothing=d.label_smoothing,
                             loss_type=d.loss_type, num_sources=num_sources, nll_weight=d.nll_weight, mesh=mesh,
                             chunk=config.loss_chunk or 256)

  def summarize(self, sums: dict, steps: int, source_names) -> dict:
    from phi4_jax.model.output import per_source
    pairs = max(float(sums["denominator"]), 1.0)
    means = {name: float(sums[name]) / pairs
             for name in ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                          "chosen_logratio", "rejected_logratio", "chosen_nll")}
    return {**means, "loss_per_source": per_source(sums, "source_pairs", source_names),
            "pairs_per_step": float(sums["denominator"]) / steps}

  def abstract_batch(self, config, rows: tuple[int, int], sharding) -> dict:
    from phi4_jax.data.pairs import HOST_ONLY_FIELDS, PAIR_ROW_FIELDS
    batch = {name: jax.ShapeDtypeStruct((*rows, config.seq_len), jnp.int32, sharding=sharding)
             for name in PAIR_ROW_FIELDS if name not in HOST_ONLY_FIELDS}
    slots = (*rows, config.data.pairs_per_row)
    batch["pair_source_ids"] = jax.ShapeDtypeStruct(slots, jnp.int32, sharding=sharding)
    if config.dpo.precompute_reference:
      for name in ("ref_chosen", "ref_rejected"):
        batch[name] = jax.ShapeDtypeStruct(slots, jnp.float32, sharding=sharding)
    return batch

  def abstract_extras(self, config, params, param_shardings) -> tuple[dict, dict]:
    if config.dpo.precompute_reference:
      return {}, {}
    return {"reference": params}, {"reference": param_shardings}

  def prepare(self, run, make_iterator, to_global) -> None:
    """The frozen reference as a step input, or, with dpo.precompute_reference, its log-probs
    scored once and attached to the batches."""
    from phi4_jax.posttrain import reference as reference_lib
    from phi4_jax.store import workdir as workdir_lib
    config = run.config
    _, reference = workdir_lib.restore_params(config.init_from, None if config.init_step < 0 else
                                              config.init_step, run.shardings["params"], cfg=run.cfg)
    if not config.dpo.precompute_reference:
      run.extras["reference"], run.extra_shardings["reference"] = reference, run.shardings["params"]
      return
    table = reference_lib.precompute(run, reference, make_iterator, to_global, sequence_logprobs)
    run.data_iter = reference_lib.WithReference(run.data_iter, table)

  def notes(self, rows: list[dict]) -> list[str]:
    last = rows[-1]
    notes = [f"train reward acc {last['reward_accuracy']:.2f}, margin {last['reward_margin']:.3f}"]
    if "chosen_logratio" in last:  # (rows of runs before these were logged lack them)
      notes.append(f"log-prob vs reference: chosen {last['chosen_logratio']:+.2f}, "
                   f"rejected {last['rejected_logratio']:+.2f}")
    return notes

  def heldout(self, recipe, stage, stage_dir: str) -> dict | None:
    """Reward accuracy and margin of the stage's final params against its reference on the
    recipe's `dpo_heldout` pairs (the first `dpo_heldout_pairs` of each source; 0 = all), over all
    of them and per source ("sources"); None without them."""
    if not recipe.get("dpo_heldout"):
      return None
    from phi4_jax.store import workdir as workdir_lib
    cut = recipe.get("dpo_heldout_pairs", 0) or None
    pairs = {name: found[:cut] for name, found in read_pairs(recipe.dpo_heldout, stage.data.cache_dir).items()}
    cfg, policy = workdir_lib.restore_params(stage_dir)
    _, reference = workdir_lib.restore_params(stage.init_from, cfg=cfg)
    return heldout_rewards(policy, reference, cfg, [p for found in pairs.values() for p in found],
                           stage.dpo.beta, {name: len(found) for name, found in pairs.items()})

"""A recipe's closing report: a summary table, W/report.png, held-out DPO rewards, and samples.

    | stage | steps | first loss | final loss | tokens/s (median) | notes |

The curves lay the stages end to end: the loss, the loss per source, and DPO's reward accuracy
and margin. A DPO stage whose recipe names `dpo_heldout` pairs is also scored on them (its final
params against its reference, W/heldout.json); the last stage's model continues `sample_prompts`
greedily (W/samples.md).
"""

from __future__ import annotations

import json
import os

from phi4_jax.posttrain import stages as data_stages
from phi4_jax.store import workdir as workdir_lib
from phi4_jax.train.metrics import median_tokens_per_s, read_metrics

HELDOUT = "heldout.json"


def write(config, workdir: str, stages: list[tuple], evaluate: bool = True) -> str:
  """Writes the report files of a finished (or interrupted) recipe; returns the text to print."""
  stage_rows = [(name, read_metrics(stage_dir)) for name, _, stage_dir in stages]
  made = {name: _read_json(os.path.join(stage_dir, data_stages.SUMMARY)) for name, stage, stage_dir in stages
          if data_stages.is_generation(stage)}
  heldout = heldout_rewards(config, stages, _read_json(workdir_lib.path(workdir, HELDOUT))) if evaluate else {}
  if heldout:
    with open(workdir_lib.path(workdir, HELDOUT), "w") as f:
      json.dump(heldout, f, indent=1)
  write_curves(workdir, stage_rows)
  text = summary_table(stage_rows, heldout, made)
  if evaluate and config.get("sample_prompts"):
    trained = [s for s in stages if not data_stages.is_generation(s[1])]
    text += "\n" + write_samples(workdir, trained[-1], config.sample_prompts, config.get("sample_tokens", 24))
  return text


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def heldout_rewards(config, stages: list[tuple], known: dict | None = None) -> dict[str, dict]:
  """{dpo stage: its reward accuracy and margin on config.dpo_heldout (the first
  config.dpo_heldout_pairs of them; 0 = all)} for every DPO stage with a checkpoint; `known` (the
  last report's) is reused for a stage whose checkpoint has not changed."""
  if not config.get("dpo_heldout"):
    return {}
  from phi4_jax.posttrain import dpo
  from phi4_jax.store import checkpoint
  pairs, out = None, {}
  for name, stage, stage_dir in stages:
    step = checkpoint.latest_step(stage_dir)
    if stage.get("objective") != "dpo" or step is None:
      continue
    if (known or {}).get(name, {}).get("step") == step:
      out[name] = known[name]
      continue
    if pairs is None:
      pairs = dpo.read_pairs(config.dpo_heldout, stage.data.cache_dir)[:config.get("dpo_heldout_pairs", 0) or None]
    cfg, policy = workdir_lib.restore_params(stage_dir)
    _, reference = workdir_lib.restore_params(stage.init_from, cfg=cfg)
    out[name] = {"step": step, **dpo.heldout_rewards(policy, reference, cfg, pairs, stage.dpo.beta)}
  return out


def data_note(summary: dict) -> str:
  """What a data stage made, for the report's notes column."""
  if not summary:
    return "not run"
  if "searched" in summary:
    return (f"searched {summary['searched']} of {summary['questions']} questions, "
            f"{summary['pivots']} pivotal tokens, {summary['pairs']} pairs")
  return (f"{summary['pairs']} pairs from {summary['prompts']} prompts ({summary['accuracy_pairs']} by "
          f"accuracy, {summary['overall_pairs']} overall), {summary['dropped_responses']} responses dropped")


def eval_note(row: dict) -> str:
  """A row's evaluation, e.g. "eval@32: answers acc 0.41 (n 64), choice acc_norm 0.30"."""
  parts = []
  for task, metrics in row["eval"].items():
    shown = {k: v for k, v in metrics.items() if k in ("acc", "acc_norm", "pass@1")}
    if task == "perplexity" and "all" in metrics:
      shown = {"bits/byte": metrics["all"]["bits_per_byte"]}
    parts.append(f"{task} " + " ".join(f"{k} {v:.2f}" for k, v in shown.items())
                 + (f" (n {metrics['n']})" if "n" in metrics else ""))
  return f"eval@{row['step']}: " + ", ".join(parts)


def summary_table(stage_rows: list[tuple[str, list[dict]]], heldout: dict | None = None,
                  made: dict | None = None) -> str:
  """A Markdown table: one row per stage with steps, first and last loss, tokens/s and notes (what
  a data stage of `made` produced)."""
  lines = ["| stage | steps | first loss | final loss | tokens/s (median) | notes |",
           "|---|---|---|---|---|---|"]
  for name, rows in stage_rows:
    if made is not None and name in made:
      lines.append(f"| {name} | - | - | - | - | {data_note(made[name])} |")
      continue
    if not rows:
      lines.append(f"| {name} | 0 | - | - | - | |")
      continue
    notes = []
    if "reward_accuracy" in rows[-1]:
      notes.append(f"train reward acc {rows[-1]['reward_accuracy']:.2f}, margin "
                   f"{rows[-1]['reward_margin']:.3f}")
    if heldout and name in heldout:
      h = heldout[name]
      notes.append(f"held-out reward acc {h['reward_accuracy']:.2f} ({h['pairs']} pairs)")
    evaluated = [r for r in rows if "eval" in r]
    if evaluated:
      notes.append(eval_note(evaluated[-1]))
    lines.append(f"| {name} | {rows[-1]['step']} | {rows[0]['loss']:.3f} | {rows[-1]['loss']:.3f} | "
                 f"{median_tokens_per_s(rows):,.0f} | {'; '.join(notes)} |")
  return "\n".join(lines)


def _plot_stage(axes, name: str, rows: list[dict], offset: int) -> int:
  ax_all, ax_src, ax_dpo = axes
  steps = [offset + r["step"] for r in rows]
  ax_all.plot(steps, [r["loss"] for r in rows], label=name)
  for source in sorted({s for r in rows for s in r.get("loss_per_source", {})}):
    points = [(offset + r["step"], r["loss_per_source"][source]) for r in rows
              if source in r.get("loss_per_source", {})]
    ax_src.plot(*zip(*points), label=f"{name}/{source}")
  if "reward_accuracy" in rows[-1]:
    ax_dpo.plot(steps, [r["reward_accuracy"] for r in rows], label=f"{name} reward accuracy")
    ax_dpo.plot(steps, [r["reward_margin"] for r in rows], label=f"{name} reward margin")
  ax_all.axvline(offset, color="gray", lw=0.5)
  return steps[-1]


def write_curves(workdir: str, stage_rows: list[tuple[str, list[dict]]]) -> str:
  """W/report.png: loss, loss per source and DPO rewards of every stage, steps end to end."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
  offset = 0
  for name, rows in stage_rows:
    if rows:
      offset = _plot_stage(axes, name, rows, offset)
  for ax, title in zip(axes, ("loss", "loss per source", "DPO rewards (training batches)")):
    ax.set_xlabel("step (stages end to end)")
    ax.set_title(title)
    if ax.lines:
      ax.legend(fontsize=7)
  fig.tight_layout()
  path = workdir_lib.path(workdir, workdir_lib.REPORT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write_samples(workdir: str, last: tuple, prompts, max_new_tokens: int) -> str:
  """Greedy continuations of `prompts` by the last stage's model, as text; also W/samples.md."""
  from phi4_jax import inference
  from phi4_jax.tokenizer import Phi4Tokenizer
  tok = Phi4Tokenizer()
  from phi4_jax.store import checkpoint
  name, _, stage_dir = last
  path = workdir_lib.path(workdir, workdir_lib.SAMPLES)
  header = f"Samples from {name} (greedy, up to {max_new_tokens} tokens):"
  stamp = f"<!-- {stage_dir} step {checkpoint.latest_step(stage_dir)} {list(prompts)} -->"
  if os.path.exists(path) and open(path, encoding="utf-8").read().startswith(stamp):
    return open(path, encoding="utf-8").read()[len(stamp) + 1:].rstrip("\n")  # (unchanged model)
  cfg, params = workdir_lib.restore_params(stage_dir)
  stops = (tok.endoftext_id, tok.im_end_id)
  outs = inference.generate(params, cfg, [[tok.bos_id, *tok.encode_ordinary(p)] for p in prompts],
                            max_new_tokens=max_new_tokens, stop_ids=stops)
  lines = [header, *(f"  {p!r} -> {tok.decode([t for t in out if t not in stops])!r}"
                     for p, out in zip(prompts, outs))]
  text = "\n".join(lines)
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"{stamp}\n{text}\n")
  return text

"""A recipe's closing report: a summary table, W/report.png, held-out DPO rewards, and samples.

    | stage | steps | first loss | final loss | tokens/s (median) | notes |

The curves lay the stages end to end: the loss, the loss per source, and DPO's reward accuracy
and margin. A data stage's row is its kind's note; a training stage's notes are its objective's
(train/objectives.py), its held-out evaluation (W/heldout.json: a DPO stage's rewards on the
recipe's `dpo_heldout` pairs) and its last evaluation row; the last model-making stage continues
`sample_prompts` greedily (W/samples.md).
"""

from __future__ import annotations

import json
import os

from phi4_jax.recipe.stages import kind_of
from phi4_jax.store import atomic, workdir as workdir_lib
from phi4_jax.train import objectives
from phi4_jax.train.metrics import median_tokens_per_s, read_metrics

HELDOUT = "heldout.json"


def write(config, workdir: str, stages: list[tuple], evaluate: bool = True) -> str:
  """Writes the report files of a finished (or interrupted) recipe; returns the text to print."""
  stage_rows = [(name, read_metrics(stage_dir)) for name, _, stage_dir in stages]
  made = {name: kind_of(stage).note(stage, stage_dir) for name, stage, stage_dir in stages
          if not kind_of(stage).makes_model}
  known = _read_json(workdir_lib.path(workdir, HELDOUT))
  heldout = heldout_results(config, stages, known) if evaluate else {}
  if heldout:
    atomic.write_json(workdir_lib.path(workdir, HELDOUT), heldout)
  write_curves(workdir, stage_rows)
  notes = {name: objectives.get(stage.objective).notes(rows) for (name, stage, _), (_, rows) in
           zip(stages, stage_rows) if kind_of(stage).makes_model and rows}
  text = summary_table(stage_rows, heldout, made, notes)
  if evaluate and config.get("sample_prompts"):
    trained = [s for s in stages if kind_of(s[1]).makes_model]
    text += "\n" + write_samples(workdir, trained[-1], config.sample_prompts, config.get("sample_tokens", 24))
  return text


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def heldout_results(config, stages: list[tuple], known: dict | None = None) -> dict[str, dict]:
  """{stage: its objective's held-out evaluation (objectives' `heldout`)} of every training stage
  with a checkpoint whose objective has one; `known` (the last report's) is reused for a stage
  whose checkpoint has not changed."""
  from phi4_jax.store import checkpoint
  out = {}
  for name, stage, stage_dir in stages:
    step = checkpoint.latest_step(stage_dir)
    if not kind_of(stage).makes_model or step is None:
      continue
    if (known or {}).get(name, {}).get("step") == step:
      out[name] = known[name]
      continue
    result = objectives.get(stage.objective).heldout(config, stage, stage_dir)
    if result is not None:
      out[name] = {"step": step, **result}
  return out


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
                  made: dict | None = None, notes: dict | None = None) -> str:
  """A Markdown table: one row per stage with steps, first and last loss, tokens/s and notes (the
  objective's `notes`, the held-out rewards and the last evaluation; a data stage of `made`: its
  note alone)."""
  lines = ["| stage | steps | first loss | final loss | tokens/s (median) | notes |",
           "|---|---|---|---|---|---|"]
  for name, rows in stage_rows:
    if made is not None and name in made:
      lines.append(f"| {name} | - | - | - | - | {made[name] or 'not run'} |")
      continue
    if not rows:
      lines.append(f"| {name} | 0 | - | - | - | |")
      continue
    row_notes = list((notes or {}).get(name, []))
    if heldout and name in heldout:
      h = heldout[name]
      row_notes.append(f"held-out reward acc {h['reward_accuracy']:.2f} ({h['pairs']} pairs)")
    evaluated = [r for r in rows if "eval" in r]
    if evaluated:
      row_notes.append(eval_note(evaluated[-1]))
    lines.append(f"| {name} | {rows[-1]['step']} | {rows[0]['loss']:.3f} | {rows[-1]['loss']:.3f} | "
                 f"{_rate(median_tokens_per_s(rows))} | {'; '.join(row_notes)} |")
  return "\n".join(lines)


def _rate(tokens_per_s: float | None) -> str:
  return "-" if tokens_per_s is None else f"{tokens_per_s:,.0f}"


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
  atomic.write_text(path, f"{stamp}\n{text}\n")
  return text

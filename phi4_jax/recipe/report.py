"""A recipe's closing report: a summary table, the evaluations table, W/report.png, held-out DPO
rewards, and samples.

    | stage | steps | first loss | final loss | tokens/s (median) | notes |

A data stage's row is its kind's note; a training stage's notes are its objective's
(train/objectives.py), its held-out evaluation (W/heldout.json: a DPO stage's rewards and the
chosen and rejected log-probs against its reference on the recipe's `dpo_heldout` pairs) and its
last evaluation row. The evaluations table is the paper's Table 9 at the recipe's scale: each
evaluated stage's last held-out results in a column beside their baselines (majority class,
and uniform chance for multiple choice).

W/report.png lays the stages end to end: the loss, the loss per source, DPO's reward accuracy and
margin, DPO's chosen and rejected log-probs against the reference (both falling is DPO's known
failure), and the evaluations table as bars with each baseline marked. W/samples.md holds the
last model-making stage's greedy continuations of `sample_prompts` and, side by side, every
evaluated stage's greedy chat replies to `chat_prompts`.
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
  evaluated = evaluations(stage_rows)
  write_curves(workdir, stage_rows, evaluated)
  notes = {name: objectives.get(stage.objective).notes(rows) for (name, stage, _), (_, rows) in
           zip(stages, stage_rows) if kind_of(stage).makes_model and rows}
  text = summary_table(stage_rows, heldout, made, notes)
  if evaluated:
    text += "\n\n" + evaluations_table(evaluated)
  trained = [s for s in stages if kind_of(s[1]).makes_model]
  if evaluate and trained and (config.get("sample_prompts") or config.get("chat_prompts")):
    chatting = [s for s in trained if s[0] in evaluated]
    text += "\n\n" + write_samples(workdir, trained[-1], chatting, config)
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
  """A row's evaluation with its baselines, e.g. "eval@32: answers acc 0.61 (majority 0.50, n 256),
  choice acc 0.30 acc_norm 0.28 (majority 0.27, chance 0.25, n 256)"."""
  parts = []
  for task, metrics in row["eval"].items():
    shown = {k: v for k, v in metrics.items() if k in ("acc", "acc_norm", "empty", "pass@1")}
    if task == "perplexity" and "all" in metrics:
      shown = {"bits/byte": metrics["all"]["bits_per_byte"]}
    context = [f"{k} {metrics[k]:.2f}" for k in ("majority", "chance") if k in metrics]
    context += [f"n {metrics['n']}"] if "n" in metrics else []
    parts.append(f"{task} " + " ".join(f"{k} {v:.2f}" for k, v in shown.items())
                 + (f" ({', '.join(context)})" if context else ""))
  return f"eval@{row['step']}: " + ", ".join(parts)


TABLE_METRICS = {"answers": ("acc", "empty"), "choice": ("acc", "acc_norm"), "humaneval": ("pass@1",)}
SCORES = ("acc", "acc_norm")  # the metrics the baselines are baselines of
BASELINES = ("majority", "chance")


def evaluations(stage_rows: list[tuple[str, list[dict]]]) -> dict[str, dict]:
  """{stage: (step, {task: metrics})} of each stage's last evaluated metrics row, in stage order."""
  out = {}
  for name, rows in stage_rows:
    evaluated = [r for r in rows if "eval" in r]
    if evaluated:
      out[name] = (evaluated[-1]["step"], evaluated[-1]["eval"])
  return out


def table_rows(evaluated: dict[str, dict]) -> list[tuple[str, dict, dict]]:
  """(task metric, {baseline: value}, {stage: value}) of every tabled metric any stage reports."""
  out = []
  for task, metrics in TABLE_METRICS.items():
    for metric in metrics:
      values = {stage: ev[task][metric] for stage, (_, ev) in evaluated.items() if metric in ev.get(task, {})}
      if values:
        last = next(ev[task] for _, ev in reversed(list(evaluated.values())) if task in ev)
        baselines = {b: last[b] for b in BASELINES if b in last} if metric in SCORES else {}
        out.append((f"{task} {metric}", baselines, values))
  return out


def evaluations_table(evaluated: dict[str, dict]) -> str:
  """Markdown: one row per evaluation (n items), its baselines, then one column per stage."""
  stages = list(evaluated)
  lines = ["| evaluation | n | " + " | ".join(BASELINES) + " | " + " | ".join(
      f"{s} (step {evaluated[s][0]})" for s in stages) + " |", "|---" * (2 + len(BASELINES) + len(stages)) + "|"]
  for label, baselines, values in table_rows(evaluated):
    task = label.split()[0]
    n = next((ev[task]["n"] for _, ev in evaluated.values() if "n" in ev.get(task, {})), "-")
    cells = [f"{baselines[b]:.3f}" if b in baselines else "-" for b in BASELINES]
    cells += [f"{values[s]:.3f}" if s in values else "-" for s in stages]
    lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


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
      per_source = ", ".join(f"{name} {s['reward_accuracy']:.2f}" for name, s in h.get("sources", {}).items())
      row_notes.append(f"held-out reward acc {h['reward_accuracy']:.2f} ({h['pairs']} pairs"
                       + (f": {per_source})" if per_source else ")"))
    evaluated = [r for r in rows if "eval" in r]
    if evaluated:
      row_notes.append(eval_note(evaluated[-1]))
    lines.append(f"| {name} | {rows[-1]['step']} | {rows[0]['loss']:.3f} | {rows[-1]['loss']:.3f} | "
                 f"{_rate(median_tokens_per_s(rows))} | {'; '.join(row_notes)} |")
  return "\n".join(lines)


def _rate(tokens_per_s: float | None) -> str:
  return "-" if tokens_per_s is None else f"{tokens_per_s:,.0f}"


def _plot_stage(axes, name: str, rows: list[dict], offset: int) -> int:
  ax_all, ax_src, ax_dpo, ax_logp = axes
  steps = [offset + r["step"] for r in rows]
  ax_all.plot(steps, [r["loss"] for r in rows], label=name)
  for source in sorted({s for r in rows for s in r.get("loss_per_source", {})}):
    points = [(offset + r["step"], r["loss_per_source"][source]) for r in rows
              if source in r.get("loss_per_source", {})]
    ax_src.plot(*zip(*points), label=f"{name}/{source}")
  if "reward_accuracy" in rows[-1]:
    ax_dpo.plot(steps, [r["reward_accuracy"] for r in rows], label=f"{name} reward accuracy")
    ax_dpo.plot(steps, [r["reward_margin"] for r in rows], label=f"{name} reward margin")
  for side in ("chosen", "rejected"):
    points = [(offset + r["step"], r[f"{side}_logratio"]) for r in rows if f"{side}_logratio" in r]
    if points:
      ax_logp.plot(*zip(*points), label=f"{name} {side}", ls="-" if side == "chosen" else "--")
  ax_all.axvline(offset, color="gray", lw=0.5)
  return steps[-1]


def _plot_evaluations(ax, evaluated: dict[str, dict]) -> None:
  """Grouped bars: one group per tabled evaluation, one bar per stage, each baseline a line."""
  rows, stages = table_rows(evaluated), list(evaluated)
  width = 0.8 / max(len(stages), 1)
  for j, stage in enumerate(stages):
    xs = [i + (j - (len(stages) - 1) / 2) * width for i, (_, _, v) in enumerate(rows) if stage in v]
    ax.bar(xs, [v[stage] for _, _, v in rows if stage in v], width, label=stage)
  for i, (_, baselines, _) in enumerate(rows):
    for b, style in zip(BASELINES, ("k--", "k:")):
      if b in baselines:
        ax.plot([i - 0.45, i + 0.45], [baselines[b]] * 2, style, lw=1, label=b if i == 0 else None)
  ax.set_xticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
  ax.set_ylim(0, 1)


def write_curves(workdir: str, stage_rows: list[tuple[str, list[dict]]], evaluated: dict | None = None) -> str:
  """W/report.png: loss, loss per source (its legend in a panel of its own), DPO rewards, DPO
  log-probs against the reference, and the evaluations with their baselines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, grid = plt.subplots(2, 3, figsize=(17, 9))
  (ax_all, ax_src, ax_dpo), (ax_logp, ax_eval, ax_legend) = grid
  offset = 0
  for name, rows in stage_rows:
    if rows:
      offset = _plot_stage((ax_all, ax_src, ax_dpo, ax_logp), name, rows, offset)
  _plot_evaluations(ax_eval, evaluated or {})
  titles = {ax_all: "loss", ax_src: "loss per source (legend: bottom right)",
            ax_dpo: "DPO rewards (training batches)",
            ax_logp: "DPO log-prob - reference (nats): chosen should not fall",
            ax_eval: "held-out evaluations (lines: baselines)"}
  for ax, title in titles.items():
    ax.set_title(title, fontsize=10)
    if ax is not ax_eval:
      ax.set_xlabel("step (stages end to end)")
    if ax.lines and ax is not ax_src:
      ax.legend(fontsize=7)
  ax_legend.axis("off")
  if ax_src.lines:
    ax_legend.legend(*ax_src.get_legend_handles_labels(), loc="center", fontsize=7,
                     ncol=1 + len(ax_src.lines) // 16, title="loss per source")
  fig.tight_layout()
  path = workdir_lib.path(workdir, workdir_lib.REPORT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _greedy(stage_dir: str, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
  from phi4_jax import inference
  from phi4_jax.tokenizer import Phi4Tokenizer
  tok = Phi4Tokenizer()
  cfg, params = workdir_lib.restore_params(stage_dir)
  stops = (tok.endoftext_id, tok.im_end_id)
  outs = inference.generate(params, cfg, prompts, max_new_tokens=max_new_tokens, stop_ids=stops)
  return [tok.decode([t for t in out if t not in stops]) for out in outs]


def _cell(text: str) -> str:
  return "`" + text.replace("\n", " ").replace("|", "\\|").replace("`", "'") + "`" if text else "*(empty)*"


def write_samples(workdir: str, last: tuple, chatting: list[tuple], config) -> str:
  """Greedy continuations of config.sample_prompts by the last stage's model and, side by side,
  each `chatting` stage's greedy chat replies to config.chat_prompts, as text; also W/samples.md."""
  from phi4_jax.eval.model import chat_prompt, plain_prompt
  from phi4_jax.store import checkpoint
  prompts, chats = list(config.get("sample_prompts") or ()), list(config.get("chat_prompts") or ())
  tokens = config.get("sample_tokens", 24)
  chatting = chatting if chats else []
  path = workdir_lib.path(workdir, workdir_lib.SAMPLES)
  models = [(name, stage_dir, checkpoint.latest_step(stage_dir)) for name, _, stage_dir in [last, *chatting]]
  stamp = f"<!-- {models} {prompts} {chats} -->"
  if os.path.exists(path) and open(path, encoding="utf-8").read().startswith(stamp):
    return open(path, encoding="utf-8").read()[len(stamp) + 1:].rstrip("\n")  # (unchanged models)
  lines = []
  if prompts:
    outs = _greedy(last[2], [plain_prompt(p) for p in prompts], tokens)
    lines += [f"Samples from {last[0]} (greedy, up to {tokens} tokens):",
              *(f"  {p!r} -> {out!r}" for p, out in zip(prompts, outs))]
  if chatting:
    replies = {name: _greedy(stage_dir, [chat_prompt(q) for q in chats], tokens) for name, _, stage_dir in chatting}
    lines += ["", f"Chat replies (greedy, up to {tokens} tokens):", "",
              "| prompt | " + " | ".join(replies) + " |", "|---" * (1 + len(replies)) + "|"]
    lines += [f"| {_cell(q)} | " + " | ".join(_cell(r[i]) for r in replies.values()) + " |"
              for i, q in enumerate(chats)]
  text = "\n".join(lines)
  atomic.write_text(path, f"{stamp}\n{text}\n")
  return text

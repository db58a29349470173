"""Runs a stage config, or a recipe of stages that hand their params to each other.

A recipe config has `stages` (names, in order) and one full stage config per name. Stage i runs in
W/<name>; unless its `init_from` is set, it starts from stage i-1's workdir. Rerunning skips stages
whose final checkpoint exists and resumes an interrupted one.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from phi4_jax.train import checkpoint, workdir as workdir_lib
from phi4_jax.train.config import validate
from phi4_jax.train.loop import train
from phi4_jax.train.metrics import median_tokens_per_s, read_metrics


def finished(stage: ml_collections.ConfigDict, stage_dir: str) -> bool:
  """A stage is done once its workdir holds a checkpoint at (or past) its last step."""
  step = checkpoint.latest_step(stage_dir)
  return step is not None and step >= stage.steps


def stage_dirs(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict, str]]:
  """[(stage name, stage config, its workdir)] in order; ("", config, workdir) for a plain stage."""
  if "stages" not in config:
    return [("", config, workdir)]
  return [(name, config[name], os.path.join(workdir, name)) for name in config.stages]


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  if "stages" not in config:
    return [train(config, workdir)]
  for name in config.stages:  # every stage's config is checked before the first one trains
    if name not in config:
      raise ValueError(f"config.stages names {name!r}, but the recipe has no config.{name}")
    try:
      validate(config[name], jax.device_count(), check_init_from=name == config.stages[0])
    except ValueError as e:
      raise ValueError(f"stage {name}: {e}") from e
  results = []
  previous = ""
  for name, stage, stage_dir in stage_dirs(config, workdir):
    if previous and not stage.init_from:
      with stage.unlocked():
        stage.init_from = previous
    if finished(stage, stage_dir):
      logging.info("stage %s already finished in %s: skipped", name, stage_dir)
      results.append({"stage": name, "workdir": stage_dir, "skipped": True})
    else:
      result = train(stage, stage_dir, flag_prefix=f"--config.{name}.")
      results.append(result)
      if result["preempted"]:
        break
    previous = stage_dir
  if jax.process_index() == 0:
    stage_rows = read_stage_metrics(workdir, config.stages)
    print(summary_table(stage_rows))
    write_report(workdir, stage_rows)
    if config.get("sample_prompts") and not results[-1].get("preempted") and jax.process_count() == 1:
      print(write_samples(workdir, stage_dirs(config, workdir)[-1], config.sample_prompts,
                          config.get("sample_tokens", 24)))
  return results


def write_samples(workdir: str, last: tuple, prompts, max_new_tokens: int) -> str:
  """Greedy continuations of `prompts` by the last stage's model, as text; also W/samples.md."""
  from phi4_jax import inference
  from phi4_jax.tokenizer import Phi4Tokenizer
  tok = Phi4Tokenizer()
  name, _, stage_dir = last
  cfg, params = workdir_lib.restore_params(stage_dir)
  stops = (tok.endoftext_id, tok.im_end_id)
  outs = inference.generate(params, cfg, [[tok.bos_id, *tok.encode_ordinary(p)] for p in prompts],
                            max_new_tokens=max_new_tokens, stop_ids=stops)
  lines = [f"Samples from {name} (greedy, up to {max_new_tokens} tokens):"]
  lines += [f"  {p!r} -> {tok.decode([t for t in out if t not in stops])!r}" for p, out in zip(prompts, outs)]
  text = "\n".join(lines)
  with open(workdir_lib.path(workdir, workdir_lib.SAMPLES), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  return text


def read_stage_metrics(workdir: str, stages) -> list[tuple[str, list[dict]]]:
  """[(stage name, its metrics.jsonl rows)] in recipe order."""
  return [(name, read_metrics(os.path.join(workdir, name))) for name in stages]


def summary_table(stage_rows: list[tuple[str, list[dict]]]) -> str:
  """A Markdown table: one row per stage with first and last loss, tokens/s and steps."""
  lines = ["| stage | steps | first loss | final loss | tokens/s (median) |",
           "|---|---|---|---|---|"]
  for name, rows in stage_rows:
    if not rows:
      lines.append(f"| {name} | 0 | - | - | - |")
      continue
    lines.append(f"| {name} | {rows[-1]['step']} | {rows[0]['loss']:.3f} | {rows[-1]['loss']:.3f} | "
                 f"{median_tokens_per_s(rows):,.0f} |")
  return "\n".join(lines)


def write_report(workdir: str, stage_rows: list[tuple[str, list[dict]]]) -> str:
  """W/report.png: overall and per-source loss curves of every stage, steps laid end to end."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_all, ax_src) = plt.subplots(1, 2, figsize=(12, 4.5))
  offset = 0
  for name, rows in stage_rows:
    if not rows:
      continue
    steps = [offset + r["step"] for r in rows]
    ax_all.plot(steps, [r["loss"] for r in rows], label=name)
    for source in sorted({s for r in rows for s in r.get("loss_per_source", {})}):
      points = [(offset + r["step"], r["loss_per_source"][source]) for r in rows
                if source in r.get("loss_per_source", {})]
      ax_src.plot(*zip(*points), label=f"{name}/{source}")
    ax_all.axvline(offset, color="gray", lw=0.5)
    offset = steps[-1]
  for ax, title in ((ax_all, "loss"), (ax_src, "loss per source")):
    ax.set_xlabel("step (stages end to end)")
    ax.set_title(title)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path = workdir_lib.path(workdir, workdir_lib.REPORT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path

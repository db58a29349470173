"""Config sweeps: one base config, overrides per point, each point a run in its own workdir.

A sweep file (experiments/sweeps/<name>.py) defines `get_sweep(arg) -> Sweep` (phi4_jax/sweeps.py).

  python -m launch.sweep --sweep=experiments/sweeps/synthetic_mix.py      # locally, in runs/<name>
  python -m launch.sweep --sweep=experiments/sweeps/synthetic_mix.py --target=slurm \
      --workdir=/nfs/sweeps/synthetic_mix --nodes=2 --gpus_per_node=8 [--submit]
  python -m launch.sweep --sweep=experiments/sweeps/synthetic_mix.py --summary

Points run in W/<point> (run name <sweep>-<point> on clusters). Locally they run one after another;
rerunning skips finished points (a final checkpoint at config.steps) and resumes an interrupted
one from its checkpoint. W/summary.md and W/summary.csv get one row per point.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from launch import cluster, job as job_lib, local
from phi4_jax import sweeps
from phi4_jax.sweeps import Point, Sweep

SWEEP_FILE = "sweep.json"
_print = functools.partial(print, flush=True)  # ordered with the points' own output


def job(sweep: Sweep, point: Point, root: str) -> job_lib.Job:
  """The point's phi4_jax.main flags, run in root/<point>."""
  return job_lib.Job(sweep.args(point, os.path.join(root, point.name)))


def point_configs(sweep: Sweep) -> dict[str, ml_collections.ConfigDict]:
  """Every point's config, built before anything runs (a bad override fails the whole sweep)."""
  return {point.name: sweep.point_config(point) for point in sweep.points}


def _jsonable(value: Any) -> Any:
  return json.loads(json.dumps(value, default=list))


def record(sweep: Sweep, root: str) -> None:
  """Writes W/sweep.json; refuses a sweep whose points changed since it started in W."""
  path = os.path.join(root, SWEEP_FILE)
  now = {"name": sweep.name, "config": sweep.config,
         "points": {p.name: _jsonable(sweep.overrides_of(p)) for p in sweep.points}}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      before = json.load(f)
    if before["config"] != now["config"]:
      raise ValueError(f"{root} holds a sweep of {before['config']}, not {now['config']}; "
                       "use another --workdir")
    for name, overrides in now["points"].items():
      if name in before["points"] and before["points"][name] != overrides:
        raise ValueError(f"point {name} in {root} ran with {before['points'][name]}, but the sweep "
                         f"now gives it {overrides}; use another --workdir or delete {root}/{name}")
    now["points"] = {**before["points"], **now["points"]}
  os.makedirs(root, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(now, f, indent=1)


def finished(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Whether the run (every stage of a recipe) has its final checkpoint."""
  from phi4_jax.recipe import runner as recipe
  return all(recipe.finished(stage, d) for _, stage, d in recipe.stage_dirs(config, workdir))


def metrics_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the run's (last stage's) metrics.jsonl is."""
  from phi4_jax.recipe import runner as recipe
  return recipe.stage_dirs(config, workdir)[-1][2]


class LocalRunner:
  """Runs a point's phi4_jax.main here: one process, or several through launch.local."""

  def __init__(self, num_processes: int = 1, devices_per_process: int = 0):
    self.num_processes, self.devices_per_process = num_processes, devices_per_process

  def __call__(self, job: job_lib.Job) -> int:
    if self.num_processes > 1:
      return local.launch(list(job.args), self.num_processes, self.devices_per_process or 1)
    env = local.process_env(self.devices_per_process) if self.devices_per_process else None
    return subprocess.run([sys.executable, "-m", local.DEFAULT_MODULE, *job.args], env=env).returncode


def run_local(sweep: Sweep, root: str, runner: Callable[[job_lib.Job], int],
              is_finished: Callable[[ml_collections.ConfigDict, str], bool] = finished,
              log: Callable[[str], None] = _print) -> dict[str, str]:
  """Runs the unfinished points one after another; returns each point's status."""
  configs = point_configs(sweep)
  record(sweep, root)
  statuses = {}
  for i, point in enumerate(sweep.points):
    config, workdir = configs[point.name], os.path.join(root, point.name)
    if is_finished(config, workdir):
      log(f"[sweep] {i + 1}/{len(sweep.points)} {point.name}: finished before, skipped")
      statuses[point.name] = "done"
      continue
    log(f"[sweep] {i + 1}/{len(sweep.points)} {point.name}: running in {workdir}")
    statuses[point.name] = _run_point(runner, job(sweep, point, root), config, is_finished)
    log(f"[sweep] {point.name}: {statuses[point.name]}")
    write_summary(summarize(sweep, root, statuses, is_finished, configs), root)
    if statuses[point.name] == "stopped":  # preempted: the rest would be stopped too
      break
  return statuses


def _run_point(runner: Callable[[job_lib.Job], int], point_job: job_lib.Job,
               config: ml_collections.ConfigDict, is_finished) -> str:
  """Runs one point: "done", "stopped" (exit 0 before the last step) or "failed (exit N)"."""
  code = runner(point_job)
  if code:
    return f"failed (exit {code})"
  return "done" if is_finished(config, point_job.workdir) else "stopped"


def summarize(sweep: Sweep, root: str, statuses: Mapping[str, str] | None = None,
              is_finished: Callable[[ml_collections.ConfigDict, str], bool] = finished,
              configs: Mapping[str, ml_collections.ConfigDict] | None = None) -> list[dict]:
  """One row per point: its labels, status, last step, final loss (overall and per source), tokens/s.

  configs: the points' configs (point_configs), if already built."""
  configs = configs or point_configs(sweep)
  return [_summary_row(point, configs[point.name], os.path.join(root, point.name),
                       (statuses or {}).get(point.name), is_finished) for point in sweep.points]


def _summary_row(point: Point, config: ml_collections.ConfigDict, workdir: str, status: str | None,
                 is_finished) -> dict:
  from phi4_jax.train.metrics import median_tokens_per_s, read_metrics
  metrics = read_metrics(metrics_dir(config, workdir))
  status = status or ("done" if is_finished(config, workdir) else "partial" if metrics else "pending")
  row = {"point": point.name, **{k: sweeps.label(v) for k, v in point.labels.items()}, "status": status}
  last = metrics[-1] if metrics else {}
  row.update({"step": last.get("step", 0), "final_loss": last.get("loss"),
              "tokens_per_s": median_tokens_per_s(metrics) if metrics else None})
  for source, loss in sorted(last.get("loss_per_source", {}).items()):
    row[f"loss/{source}"] = loss
  for source, progress in sorted(last.get("data", {}).get("sources", {}).items()):
    row[f"epochs/{source}"] = progress["epochs"]
  return {**row, "workdir": workdir}


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
  return str(value)


def write_summary(rows: list[dict], root: str) -> str:
  """W/summary.md and W/summary.csv (full precision); returns the Markdown."""
  keys = list(dict.fromkeys(k for row in rows for k in row))
  columns = ([k for k in keys if "/" not in k and k != "workdir"] +
             sorted(k for k in keys if k.startswith("loss/")) +
             sorted(k for k in keys if k.startswith("epochs/")) + ["workdir"])
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
  markdown = "\n".join(lines) + "\n"
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, columns, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "summary.md"), "w", encoding="utf-8") as f:
    f.write(markdown)
  with open(os.path.join(root, "summary.csv"), "w", encoding="utf-8") as f:
    f.write(buffer.getvalue())
  return markdown


def run_name(sweep: Sweep, point: Point) -> str:
  return f"{sweep.name}-{point.name}"


def emit_jobs(sweep: Sweep, root: str, target_name: str, spec: Any, jobs_dir: str,
              submit: bool = False, is_finished=finished, log: Callable[[str], None] = _print) -> list[str]:
  """One cluster job file per unfinished point under jobs_dir (submitted if asked); their paths.

  root is where the jobs run (often not mounted here): nothing is written there."""
  target = cluster.target(target_name)
  configs = point_configs(sweep)
  paths = []
  for point in sweep.points:
    if is_finished(configs[point.name], os.path.join(root, point.name)):
      log(f"[sweep] {point.name}: finished before, no job")
      continue
    path = os.path.join(jobs_dir, f"{point.name}{target.SUFFIX}")
    cluster.emit(target, target.named(spec, run_name(sweep, point)), job(sweep, point, root), path,
                 submit)
    log(f"[sweep] {point.name}: {'submitted ' if submit else ''}{path}")
    paths.append(path)
  return paths


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m launch.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sweep", required=True, help="experiments/sweeps/<name>.py[:arg]")
  parser.add_argument("--workdir", default="", help="the sweep's directory (default: runs/<name>)")
  parser.add_argument("--target", default="local", choices=("local", *cluster.TARGETS),
                      help="run the points here, or write one cluster job per point")
  parser.add_argument("--num_processes", type=int, default=1, help="local: processes per point")
  parser.add_argument("--devices_per_process", type=int, default=0,
                      help="local: fake CPU devices per process (0: this machine's accelerators)")
  parser.add_argument("--jobs_dir", default="", help="cluster: where job files go "
                      "(default: sweep_jobs/<name>)")
  parser.add_argument("--submit", action="store_true", help="cluster: also submit each job")
  parser.add_argument("--summary", action="store_true", help="only write the summary table")
  return parser


def _run_here(sweep: Sweep, root: str, flags: argparse.Namespace, rest: list[str]) -> int:
  """--target=local: runs the points, prints the summary; 1 if a point failed."""
  if rest:
    raise ValueError(f"unrecognized arguments for --target=local: {rest}")
  statuses = run_local(sweep, root, LocalRunner(flags.num_processes, flags.devices_per_process))
  print(write_summary(summarize(sweep, root, statuses), root), end="")
  return int(any(s.startswith("failed") for s in statuses.values()))


def _emit_for_target(sweep: Sweep, root: str, flags: argparse.Namespace, rest: list[str]) -> int:
  """A cluster --target: the rest of the flags are its spec flags (e.g. --nodes for slurm)."""
  target = cluster.target(flags.target)
  target_parser = argparse.ArgumentParser(prog=f"python -m launch.sweep --target={flags.target}")
  cluster.add_spec_flags(target_parser, target.Spec)
  spec = cluster.spec_from_flags(target.Spec, target_parser.parse_args(rest))
  emit_jobs(sweep, root, flags.target, spec, flags.jobs_dir or os.path.join("sweep_jobs", sweep.name),
            flags.submit)
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  flags, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  try:
    sweep = sweeps.load(flags.sweep)
    root = flags.workdir or os.path.join("runs", sweep.name)
    if flags.summary:
      print(write_summary(summarize(sweep, root), root), end="")
      return 0
    if flags.target == "local":
      return _run_here(sweep, root, flags, rest)
    return _emit_for_target(sweep, root, flags, rest)
  except (ValueError, KeyError, FileNotFoundError, TypeError) as e:
    parser.error(str(e))
  except RuntimeError as e:  # a submission failed: not a usage error
    print(f"{parser.prog}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())

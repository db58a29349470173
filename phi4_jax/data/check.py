"""Checking a stage's `config.data` before anything trains: fields, fractions, files.

Cheap and read-only: field types and ranges, unknown fields, the mixture's fractions at every
level, that each source's globs match files of a known format (or name an embedded corpus source,
without building it), and, when every source declares its unique tokens, the plan itself (so a
`max_epochs` refusal surfaces too). Each message names the full field, e.g.
`config.data.sources.web.fraction: must be in [0, 1], got 1.5`. train/config.py's `validate`
calls it for every stage of a recipe before the first trains.

A stage's sources must all hold the same kind of record (stage_format): text (pretraining), "chat"
(SFT) or "pairs" (DPO); a chat source names its messages field in text_field, a pairs source has
fixed fields (text_field ""), and an embedded `corpus:` post-training file needs its format.
"""

from __future__ import annotations

import ml_collections

from phi4_jax.data import config as data_config
from phi4_jax.data import corpus
from phi4_jax.data.planner import SOURCES_FIELD, budget, leaves, make_plan
from phi4_jax.data.chat import LONG_CONVERSATIONS
from phi4_jax.data.formats import FORMATS, RECORD_FORMATS, detect_format, record_mode
from phi4_jax.data.sources import resolve_globs


def _fail(field: str, message: str) -> None:
  raise ValueError(f"{field}: {message}")


def _check_files(field: str, cfg: ml_collections.ConfigDict) -> None:
  """Each comma-separated glob matches files of a known format, or names a corpus source."""
  parts = [g.strip() for g in cfg.globs.split(",") if g.strip()]
  if not parts:
    _fail(f"{field}.globs", "no path globs given")
  for part in parts:
    if part.startswith("corpus:"):
      name = part[len("corpus:"):]
      if name not in corpus.NAMES:
        _fail(f"{field}.globs", f"{part!r}: the embedded corpus has no source {name!r} "
              f"(it has {', '.join(corpus.NAMES)})")
      continue
    for path in resolve_globs(part, f"{field}.globs"):
      kind = detect_format(path) if cfg.format in ("",) + RECORD_FORMATS else cfg.format
      if kind is None:
        _fail(f"{field}.format", f"is '' (from the extension), but {path} has none of a known "
              f"format ({', '.join(FORMATS)}): set it")
      if not cfg.text_field and kind != "arrayrecord" and cfg.format != "pairs":
        _raw_text(field, f"{path} is {kind}")


def _raw_text(field: str, why: str) -> None:
  _fail(f"{field}.text_field", f"is '' (each record is its raw text), which only ArrayRecord "
        f"files can be, but {why}: name the field holding the text (e.g. 'text')")


def _check_source(field: str, cfg: ml_collections.ConfigDict, files: bool) -> None:
  data_config.SOURCE.check(cfg, field, complete=True)  # no typo ignored, none missing, every range
  if cfg.format and cfg.format not in FORMATS + RECORD_FORMATS:
    _fail(f"{field}.format", f"unknown format {cfg.format!r} (known: {', '.join(FORMATS)}; "
          f"{', '.join(RECORD_FORMATS)} for post-training records; '' = from each file's extension)")
  for name, kind in corpus.POSTTRAIN_FORMATS.items():
    if f"corpus:{name}" in [g.strip() for g in cfg.globs.split(",")] and cfg.format != kind:
      _fail(f"{field}.format", f"is {cfg.format!r}, but corpus:{name} holds {kind} records: set "
            f"it to {kind!r} (data/config.py's {kind}_source(...))")
  if cfg.format == "chat" and not cfg.text_field:
    _fail(f"{field}.text_field", "is '', but a chat source needs the field holding each record's "
          "messages (e.g. 'messages')")
  if cfg.format == "pairs" and cfg.text_field:
    _fail(f"{field}.text_field", f"is {cfg.text_field!r}, but pairs records have fixed fields "
          "(prompt/messages, chosen, rejected, or prompt_ids, chosen_ids, rejected_ids): set it to ''")
  if (not cfg.text_field and cfg.format != "pairs"
      and (cfg.format not in ("", "arrayrecord") or "corpus:" in cfg.globs)):
    _raw_text(field, f"{field}.format is {cfg.format!r}" if cfg.format
              else "the embedded corpus is jsonl")
  if cfg.max_doc_tokens and cfg.min_doc_tokens > cfg.max_doc_tokens:
    _fail(f"{field}.min_doc_tokens", f"{cfg.min_doc_tokens} is over {field}.max_doc_tokens="
          f"{cfg.max_doc_tokens} (0 = no limit): no document can pass")
  if files:
    _check_files(field, cfg)


def _check_sources(field: str, sources, files: bool) -> None:
  """Every node of a (nested) mixture: a source, or a mixture with `fraction` and `sources`."""
  if not isinstance(sources, ml_collections.ConfigDict) or not sources:
    _fail(field, f"must name at least one source, got {sources!r}")
  for name in sorted(sources):
    node, at = sources[name], f"{field}.{name}"
    if not isinstance(node, ml_collections.ConfigDict) or "fraction" not in node:
      _fail(at, "must be a source (data/config.py source(...)) or a mixture (mixture(...)) with a "
            "fraction")
    if "sources" in node:
      data_config.MIXTURE.check(node, at, complete=True)
      _check_sources(f"{at}.sources", node.sources, files)
    else:
      _check_source(at, node, files)


def stage_format(sources: ml_collections.ConfigDict) -> str:
  """"text", "chat" or "pairs": what every source of the stage holds (ValueError naming the first
  source that differs from the first one)."""
  found = leaves(sources)
  kinds = [record_mode(leaf.cfg.format) for leaf in found]
  for leaf, kind in zip(found, kinds):
    if kind != kinds[0]:
      _fail(f"{leaf.field}.format", f"is {leaf.cfg.format!r} ({kind} records), but "
            f"{found[0].field}.format is {found[0].cfg.format!r} ({kinds[0]} records): a stage's "
            "sources must all be text, all chat or all pairs")
  return kinds[0]


def check_config(config: ml_collections.ConfigDict, files: bool = True) -> None:
  """Raises ValueError (PlanError for the mixture's fractions and plan) naming the first bad field
  of config.data; files=False skips looking for each source's files."""
  if "data" not in config or not isinstance(config.data, ml_collections.ConfigDict):
    _fail("config.data", "missing: a stage needs data/config.py's data(...)")
  d = config.data
  data_config.DATA.check(d, "config.data", complete=True)
  if d.read_threads and 0 < d.prefetch < d.read_threads:
    _fail("config.data.prefetch", f"must be 0 (no read-ahead) or >= config.data.read_threads="
          f"{d.read_threads} (grain keeps at most `prefetch` batches in flight, so the other "
          f"threads would idle), got {d.prefetch}")
  batch = config.get("global_batch_size")
  if d.shards and isinstance(batch, int) and batch % d.shards:
    _fail("config.data.shards", f"must divide config.global_batch_size={batch} (each shard gives "
          f"the same number of rows to every batch; 0 = one per process), got {d.shards}")
  if d.long_conversations not in LONG_CONVERSATIONS:
    _fail("config.data.long_conversations", f"must be one of {', '.join(LONG_CONVERSATIONS)}, got "
          f"{d.long_conversations!r}")
  _check_sources(SOURCES_FIELD, d.sources, files)
  found = leaves(d.sources)  # fractions in [0, 1], summing to 1 at every level
  stage_format(d.sources)
  budget(config)
  if all(leaf.cfg.unique_tokens > 0 for leaf in found):
    make_plan(config)  # every source declares its unique tokens: the plan needs no files

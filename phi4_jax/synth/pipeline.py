"""A pipeline of synthetic dataset types, each with its seeds and token budget, run against one
generator into one folder; the accounting of what it made against a mixture plan.

A pipeline config (experiments/synth.py's presets; a recipe's `kind: synth` stage) has:
  types        the types to run, in order (each a synth/types name, at most once)
  benchmarks   decontamination benchmarks (data/decontam.py's --benchmarks; "" = none)
  plan         a stage config whose mixture the tokens are counted against ("" = none), e.g.
               experiments/pretrain.py:phi4_14b
  <type>       that type's settings (synth/engine.py's and its own) and `seeds` (synth/seeds.py)

Output (DIR): <type>.jsonl per type, log/ (the resumable logs and fingerprints), index.pkl (the
benchmark index) and summary.json: per type the engine's counts, and per mixture source the
accepted unique tokens, the tokens the plan trains on from it and the epochs that makes.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import ml_collections

from phi4_jax import configs, distributed, fields
from phi4_jax.data import decontam, families, planner
from phi4_jax.store import atomic, fingerprint
from phi4_jax.synth import engine, seeds, types

SUMMARY = "summary.json"


def entry_group(type_module) -> fields.Group:
  return fields.Group(engine.settings_group(type_module),
                      seeds=fields.Field("", fields.string(), "seed files: comma-separated globs (synth/seeds.py)"))


def entry(type_name: str, seeds_spec: str = "", **overrides) -> ml_collections.ConfigDict:
  """One type's pipeline entry: its settings' defaults, its seeds, then `overrides`."""
  c = entry_group(types.get(type_name)).config(seeds=seeds_spec)
  unknown = sorted(set(overrides) - set(c))
  if unknown:
    raise ValueError(f"{type_name}: unknown setting {unknown[0]!r}")
  c.update(overrides)
  return c


def pipeline(entries: dict[str, ml_collections.ConfigDict], benchmarks: str = "",
             plan: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict({"types": tuple(entries), "benchmarks": benchmarks, "plan": plan})
  for name, settings in entries.items():
    c[name] = settings
  return c


def check(config: ml_collections.ConfigDict, prefix: str = "config") -> None:
  """Every type known, each entry's settings in range, seeds given (ValueError naming the field)."""
  if not config.get("types"):
    raise ValueError(f"{prefix}.types: no types to run")
  for name in config.types:
    if list(config.types).count(name) > 1:
      raise ValueError(f"{prefix}.types: {name!r} appears twice")
    try:
      type_module = types.get(name)
    except ValueError as e:
      raise ValueError(f"{prefix}.types: {e}") from None
    if name not in config:
      raise ValueError(f"{prefix}.types names {name!r}, but there is no {prefix}.{name}")
    entry_group(type_module).check(config[name], f"{prefix}.{name}")
    if not config[name].seeds:
      raise ValueError(f"{prefix}.{name}.seeds: no seed files given")


def accounting(plan_spec: str, summaries: dict[str, dict]) -> dict[str, dict]:
  """Per mixture source the types fed: unique tokens, and with a plan its share, the tokens the
  plan trains on from it and the epochs that makes ("in_plan": false when the plan has no such source)."""
  unique: dict[str, int] = {}
  for s in summaries.values():
    unique[s["source"]] = unique.get(s["source"], 0) + s["unique_tokens"]
  if not plan_spec:
    return {source: {"unique_tokens": n} for source, n in unique.items()}
  plan = configs.load(plan_spec)
  total = planner.budget(plan)
  fractions = {leaf.name: leaf.fraction for leaf in planner.leaves(plan.data.sources)}
  out = {}
  for source, n in unique.items():
    if source not in fractions:
      out[source] = {"unique_tokens": n, "in_plan": False}
      continue
    tokens = fractions[source] * total
    out[source] = {"unique_tokens": n, "in_plan": True, "fraction": fractions[source], "planned_tokens": tokens,
                   "epochs": tokens / n if n else None}  # (None: nothing accepted to repeat)
  return out


def table(summary: dict) -> str:
  """The printed table: one row per type, then one line per mixture source."""
  head = ("type", "seeds", "items", "generated", "accepted", "duplicates", "contaminated", "unique tokens",
          "generator tokens", "rejected by reason")
  rows = [(name, *(str(s[k]) for k in ("seeds_used", "items", "generated", "accepted", "duplicates",
                                       "contaminated", "unique_tokens", "generator_tokens")),
           ", ".join(f"{r} {n}" for r, n in s["rejected"].items()) or "-") for name, s in summary["types"].items()]
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
  for source, a in summary["sources"].items():
    if a.get("epochs") is not None:
      lines.append(f"{source}: {planner._human(a['unique_tokens'])} unique -> {a['epochs']:.1f} epochs "
                   f"({100 * a['fraction']:.1f}% of {summary['plan']})")
    else:
      lines.append(f"{source}: {planner._human(a['unique_tokens'])} unique"
                   + (f" (not a source of {summary['plan']})" if a.get("in_plan") is False else ""))
  return "\n".join(lines)


def run_type(name: str, settings, generator, generator_identity: dict, out: str, index, overwrite: bool,
             process_index: int, process_count: int, progress) -> dict:
  """One type of the pipeline: its seeds, its output's fingerprint, then the engine."""
  type_module = types.get(name)
  seed_records = seeds.read(settings.seeds, settings.num_seeds)
  if settings.seeds not in families.QUESTIONS:
    fingerprint.refuse_input_as_output(out, {f"{name}.seeds": p for p in seeds.files(settings.seeds)})
  p = engine.paths(out, name)
  if process_index == 0:
    made = sorted(glob.glob(glob.escape(p["made"]) + "*"))
    fingerprint.claim(
        p["records"], {"type": name, "prompt_version": type_module.PROMPTS.version, "generator": generator_identity,
                       "seeds": fingerprint.records_identity(seed_records), "benchmarks": index[0] if index else "",
                       "settings": fingerprint.settings_identity(settings, engine.BATCHING)},
        [p["records"], p["log"], *made], overwrite)
  distributed.barrier(f"synth {name}: claimed")
  return engine.run(type_module, seed_records, generator, out, settings, index[1] if index else None,
                    process_index, process_count, progress)


def run(config: ml_collections.ConfigDict, generator, generator_identity: dict, out: str, overwrite: bool = False,
        process_index: int = 0, process_count: int = 1, progress=sys.stderr) -> dict:
  """Every type of the pipeline in order into DIR; DIR/summary.json (process 0); returns the summary."""
  check(config)
  os.makedirs(out, exist_ok=True)
  index = None
  if config.benchmarks:
    common = config[config.types[0]].common_items
    index = (config.benchmarks, decontam.load_index(out, decontam.benchmark_items(config.benchmarks), [], common))
  summaries = {name: run_type(name, config[name], generator, generator_identity, out, index, overwrite,
                              process_index, process_count, progress) for name in config.types}
  summary = {"generator": generator_identity, "benchmarks": config.benchmarks, "plan": config.plan,
             "types": summaries, "sources": accounting(config.plan, summaries)}
  if process_index == 0:
    atomic.write_json(os.path.join(out, SUMMARY), summary)
  return summary


def read_summary(out: str) -> dict | None:
  try:
    with open(os.path.join(out, SUMMARY)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None

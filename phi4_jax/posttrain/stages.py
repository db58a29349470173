"""Data-making stages of a recipe: Pivotal Token Search, judge-guided pairs and refusal data
from a model.

A stage config with `kind` "pts", "judge" or "refusal" samples from its `init_from` model (a
recipe fills it with the last training stage before it) and writes W/pairs.jsonl, which a later
DPO stage reads through a source glob `stage:<name>` (recipe/runner.py resolves it;
recipe/stages.py registers the kinds); a refusal stage also writes W/sft.jsonl (posttrain/refusal.py).
W/summary.json marks the stage done; until then a rerun resumes from the tool's log
(W/pairs.jsonl.log.jsonl; a refusal stage's W/log.jsonl).

Questions (pts, refusal) and prompts (judge) come from a JSONL file or the embedded families:
  corpus:parity        "Are there more odd or even numbers in this list: ...?" (its search split)
  corpus:exercises     the synthetic math exercises (the exercises family's search split)
  corpus:mixed         both, alternating
(data/families.py: search splits are kept clear of every held-out evaluation set).
"""

from __future__ import annotations

import json
import os

import ml_collections

from phi4_jax import distributed, fields
from phi4_jax.data import families
from phi4_jax.posttrain import judge, pts, refusal
from phi4_jax.posttrain.questions import read_questions
from phi4_jax.posttrain.rollouts import Roller
from phi4_jax.store import atomic, fingerprint

KINDS = ("pts", "judge", "refusal")
PAIRS, SUMMARY = "pairs.jsonl", "summary.json"
EMBEDDED = families.QUESTIONS  # corpus:parity, corpus:exercises, corpus:mixed


PTS_STAGE = fields.Group(
    kind=fields.Field("pts", fields.choice(KINDS), '"pts", "judge" or "refusal"'),
    stage=fields.Field("pts", fields.string(), "the stage's name in logs"),
    init_from=fields.Field("", fields.string(), "the model's workdir (a recipe fills it)"),
    init_step=fields.Field(-1, fields.integer(-1), "its checkpoint step (-1 = latest)"),
    questions=fields.Field("corpus:parity", fields.string(),
                           "a JSONL file or an embedded family (see EMBEDDED)"),
    num_questions=fields.Field(0, fields.integer(0),
                               "how many of them (0 = all of a file; required for an embedded family)"),
    settings=fields.Field(pts.FIELDS, None, "the search's settings (posttrain/pts.py)"),
)
JUDGE_STAGE = fields.Group(
    PTS_STAGE.with_defaults(kind="judge", stage="judge"),
    settings=fields.Field(judge.FIELDS, None, "the judging's settings (posttrain/judge.py)"),
    responders=fields.Field("", fields.string(),
                            'responder specs (judge.policy) separated by ";"; "" = the init_from model'),
    judge=fields.Field("oracle", fields.string(), '"oracle" or a judge spec'),
)
REFUSAL_STAGE = fields.Group(
    PTS_STAGE.with_defaults(kind="refusal", stage="refusal", questions="corpus:mixed"),
    settings=fields.Field(refusal.FIELDS, None, "sampling and rule settings (posttrain/refusal.py)"),
    teacher=fields.Field("", fields.string(),
                         'writes refusals and bogus questions: a judge.policy spec; "" = the templates'),
)
GROUPS = {"pts": PTS_STAGE, "judge": JUDGE_STAGE, "refusal": REFUSAL_STAGE}
RULES = JUDGE_STAGE.rules


def stage_fields(kind: str) -> ml_collections.ConfigDict:
  """A data stage's config: kind "pts", "judge" or "refusal"."""
  return GROUPS[kind].config()


def preset(kind: str, presets: dict[str, dict], arg: str) -> ml_collections.ConfigDict:
  """A data stage's config from an experiments file's preset table: row `arg` of `presets` gives
  its questions, num_questions and settings (a dict of the kind's settings fields)."""
  if arg not in presets:
    raise ValueError(f"unknown preset {arg!r}; choose one of {sorted(presets)}")
  row = presets[arg]
  c = stage_fields(kind)
  c.questions, c.num_questions = row["questions"], row["num"]
  c.settings.update(row["settings"])
  return c


def validate(config: ml_collections.ConfigDict, prefix: str = "config") -> None:
  """Every field known and in range (before a recipe's first stage trains)."""
  fields.check(config, {"kind": RULES["kind"]}, prefix)
  GROUPS[config.kind].check(config, prefix)  # (its settings group too)
  if config.kind == "pts":
    pts.check_settings(config.settings, f"{prefix}.settings")  # (and p_min <= p_max)
  if config.kind == "refusal":
    refusal.check_settings(config.settings, f"{prefix}.settings")  # (and usually_wrong < usually_right)
    try:
      if config.teacher:
        judge.check_spec(config.teacher)
    except ValueError as e:
      raise ValueError(f"{prefix}.teacher: {e}") from None
  if config.questions in EMBEDDED and config.num_questions < 1:
    raise ValueError(f"{prefix}.num_questions: must be >= 1 for the embedded {config.questions}, got "
                     f"{config.num_questions}")
  if config.questions not in EMBEDDED and not config.questions.endswith(".jsonl"):
    raise ValueError(f"{prefix}.questions: a .jsonl file or one of {', '.join(EMBEDDED)}, got "
                     f"{config.questions!r}")


def questions(spec: str, count: int, need_answer: bool = True) -> list[dict]:
  """The stage's questions: an embedded family (`count` of them) or a JSONL file's (the first
  `count`, 0 = all; each with its ground truth unless need_answer=False, as a judge's prompts)."""
  if spec in EMBEDDED:
    return families.questions(spec, count)
  records = read_questions(os.path.expanduser(os.path.expandvars(spec)), need_answer=need_answer)
  return records[:count] if count else records


def output(config: ml_collections.ConfigDict, stage_dir: str) -> str:
  """The pairs file a later stage's `stage:<name>` reads."""
  return os.path.join(stage_dir, PAIRS)


def finished(stage_dir: str) -> bool:
  return os.path.exists(os.path.join(stage_dir, SUMMARY))


def note(stage_dir: str) -> str | None:
  """What the stage made, for a recipe report's notes column; None before it finished."""
  try:
    with open(os.path.join(stage_dir, SUMMARY)) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  if "searched" in summary:
    found = summary.get("found", summary["pairs"])  # (pts.balance cut the difference)
    return (f"searched {summary['searched']} of {summary['questions']} questions, "
            f"{summary['pivots']} pivotal tokens, {summary['pairs']} pairs"
            + (f" ({found} before balancing)" if found != summary["pairs"] else ""))
  if "sft_records" in summary:
    return (f"{summary['pairs']} pairs and {summary['sft_records']} SFT conversations from "
            f"{summary['questions']} questions and {summary['bogus_questions']} bogus ones")
  without = summary.get("prompts_without_pair")  # (a summary from before it was counted has none)
  unpaired = ""
  if without is not None:
    why = ", ".join(f"{n} {reason}" for reason, n in without.items() if n)
    unpaired = f", {sum(without.values())} prompts without a pair{f' ({why})' if why else ''}"
  return (f"{summary['pairs']} pairs from {summary['prompts']} prompts ({summary['accuracy_pairs']} by "
          f"accuracy, {summary['overall_pairs']} overall){unpaired}, {summary['dropped_responses']} "
          "responses dropped")


def run(config: ml_collections.ConfigDict, stage_dir: str) -> dict:
  """Makes W/pairs.jsonl from the init_from model, then W/summary.json; returns the summary. With
  several processes, PTS shares the questions out (each its own log, merged by process 0) and
  the judge runs on process 0; all return once the pairs file is written."""
  import jax

  from phi4_jax import inference
  validate(config)
  if not config.init_from:
    raise ValueError(f"config.init_from: stage {config.stage} needs a model to sample from")
  os.makedirs(stage_dir, exist_ok=True)
  step = None if config.init_step < 0 else config.init_step
  records = questions(config.questions, config.num_questions, need_answer=config.kind != "judge")
  out, index, count = os.path.join(stage_dir, PAIRS), jax.process_index(), jax.process_count()
  model, redo = fingerprint.model_identity(config.init_from, step), f"delete {stage_dir} to make it again"
  specs = [s for s in (config.responders if config.kind == "judge" else "").split(";") if s]
  if config.kind == "pts":
    pts.claim(out, model, records, config.settings, index, count, flag=redo)
  elif index == 0 and config.kind == "refusal":
    teacher = judge.spec_identity(config.teacher) if config.teacher else None
    refusal.claim(stage_dir, model, teacher, records, config.settings, flag=redo)
  elif index == 0:
    judge.claim(out, [judge.spec_identity(s) for s in specs] or [model], judge.spec_identity(config.judge),
                records, config.settings, flag=redo)
  cfg, params = inference.load(config.init_from, step)
  summary = None
  if config.kind == "pts":
    pts.run(Roller(params, cfg, config.settings), records, out, config.settings, index, count)
    distributed.barrier(f"{config.stage}: searched")
    if index == 0:
      summary = pts.merge(out, records, count, config.settings.balance)
  elif index == 0 and config.kind == "refusal":
    teacher = refusal.load_teacher(config.teacher, config.settings)
    policy = judge.SamplerPolicy("policy", cfg, params, config.settings)
    summary = refusal.run(policy, teacher, records, stage_dir, config.settings)
  elif index == 0:
    responders = [judge.policy(s, config.settings) for s in specs] or [
        judge.SamplerPolicy("policy", cfg, params, config.settings)]
    judge_with = "oracle" if config.judge == "oracle" else judge.policy(config.judge, config.settings, "judge")
    summary = judge.run(responders, judge_with, records, out, config.settings)
  if summary is not None:
    if not summary.get("pairs"):
      raise ValueError(f"stage {config.stage}: no pairs from {len(records)} questions "
                       f"({json.dumps(summary)}); a DPO stage cannot train on {out}")
    summary = {"stage": config.stage, "workdir": stage_dir, **summary}
    atomic.write_json(os.path.join(stage_dir, SUMMARY), summary)  # (the stage is done once it exists)
  distributed.barrier(f"{config.stage}: done")
  with open(os.path.join(stage_dir, SUMMARY)) as f:
    return json.load(f)

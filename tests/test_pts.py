"""Pivotal Token Search: the bisection on planted success curves, pair rules, and the search over a
question file with a toy sampler whose success structure is known."""

import json
import math
import random

import ml_collections
import numpy as np
import pytest

from phi4_jax.posttrain import bisection, pts, rollouts
from phi4_jax.posttrain.rollouts import PrefixStats, TOKENIZER
from phi4_jax.store import jsonl_log


def _planted(jumps: dict[int, float], start: float):
  """p(success | prefix) as a step function of the prefix length: after token k, jumps[k]."""
  calls = []

  def p_success(prefix):
    calls.append(prefix)
    p = start
    for k in sorted(jumps):
      if len(prefix) > k:
        p = jumps[k]
    return p
  return p_success, calls


@pytest.mark.parametrize("length", [16, 64, 256, 1024])
def test_subdivide_finds_exactly_the_planted_pivots_with_logarithmically_many_calls(length):
  solution = list(range(1000, 1000 + length))
  a, b = length // 3, length - 5
  p_success, calls = _planted({a: 0.6, b: 0.9}, start=0.2)
  pivots = pts.subdivide(solution, p_success, [-1.0] * length, p_gap=0.2)
  assert pivots == [pts.Pivot(a, solution[a], 0.2, 0.6), pts.Pivot(b, solution[b], 0.6, 0.9)]
  assert len(calls) == len(set(calls))  # memoized: no prefix estimated twice
  # the two ends, then one estimate per cut on the way down to each pivot
  assert len(calls) <= 2 + 2 * (math.ceil(math.log2(length)) + 1), len(calls)


def test_a_move_of_exactly_the_gap_counts_despite_float_rounding():
  p_success, _ = _planted({4: 0.1}, start=0.3)  # 0.3 - 0.1 is 0.19999999999999998 in floats
  assert pts.subdivide(list(range(9)), p_success, [-1.0] * 9, p_gap=0.2) == [pts.Pivot(4, 4, 0.3, 0.1)]


def test_subdivide_ignores_moves_below_the_gap_and_a_flat_solution():
  solution = list(range(40))
  p_success, calls = _planted({10: 0.45}, start=0.3)
  assert pts.subdivide(solution, p_success, [-1.0] * 40, p_gap=0.2) == []
  assert len(calls) == 2  # the two ends differ by less than the gap: no cut at all


def test_split_is_at_the_cumulative_surprisal_midpoint():
  assert pts.split_point([-1.0, -1.0, -1.0, -1.0]) == 2
  assert pts.split_point([-9.0, -1.0, -1.0, -1.0]) == 1  # the first token holds most surprisal
  assert pts.split_point([-0.1, -0.1, -0.1, -6.0]) == 3  # never an empty half
  assert pts.split_point([0.0, 0.0, 0.0]) == 1  # no surprisal: the middle
  # a cut by log-prob mass, not token count (the open implementation halves by count)
  p_success, calls = _planted({1: 1.0}, start=0.0)
  pts.subdivide(list(range(8)), p_success, [-10.0] + [-0.01] * 7, p_gap=0.2)
  assert [len(c) for c in calls[:3]] == [0, 8, 1]


def _stats(first: dict[int, tuple[int, int]]) -> PrefixStats:
  st = PrefixStats()
  for token, (n, wins) in first.items():
    for k in range(n):
      st.add(token, k < wins)
  return st


def test_pair_rules_by_hand():
  st = _stats({5: (10, 9), 6: (20, 2), 7: (30, 15), 8: (5, 0)})  # p = 26/65 = 0.4
  raise_ = pts.Pivot(3, 5, 0.4, 0.9)
  assert bisection.pivot_pair(raise_, st) == (5, 6)  # most frequent alternative that lowers p: 6
  lower = pts.Pivot(3, 6, 0.4, 0.1)
  assert bisection.pivot_pair(lower, st) == (7, 6)  # 7 (0.5) raises and is more frequent than 5
  assert bisection.pivot_pair(pts.Pivot(3, 5, 0.4, 0.9), _stats({5: (10, 9)})) is None


def test_balance_cuts_the_excess_orientation_of_mirrored_token_pairs_by_hand():
  pairs = [{"chosen_ids": [c], "rejected_ids": [r], "question_id": f"q{i}"}
           for i, (c, r) in enumerate([(1, 2), (1, 2), (2, 1), (1, 2), (5, 6), (5, 6), (2, 1), (3, 4), (2, 1)])]
  kept = [p["question_id"] for p in pts.balance(pairs)]
  # (1, 2) x3 and (2, 1) x3 stay; (5, 6) and (3, 4) have no mirror and stay; nothing is reordered
  assert kept == ["q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8"]
  kept = [p["question_id"] for p in pts.balance(pairs[:6] + pairs[7:8])]  # (1, 2) x3 against (2, 1) x1
  assert kept == ["q0", "q2", "q4", "q5", "q7"]


# A toy sampler: after the question the first token decides the answer. "Adding" leads to the right
# answer, "Guess" to a wrong one; the model draws them with probability 1/2 each.
RIGHT = TOKENIZER.encode_ordinary("Adding: 3 + 4 = 7.\n\nFinal answer: 7")
WRONG = TOKENIZER.encode_ordinary("Guess.\n\nFinal answer: 8")
QUESTION = {"id": "q0", "question": "What is 3 + 4?", "answer": "7"}


class ToyRoller(rollouts.Roller):
  def __init__(self, settings, p_right=0.5):
    super().__init__(None, None, settings)
    self.p_right = p_right

  def sample(self, prompts, num_samples, sample_ids):
    self.rollouts += len(prompts) * num_samples
    out = []
    for prompt, key in zip(prompts, sample_ids):
      r = random.Random(key)
      prefix = prompt[len(prompt) - prompt[::-1].index(TOKENIZER.im_sep_id):]  # after the assistant's start
      for _ in range(num_samples):
        if not prefix:
          out.append((RIGHT if r.random() < self.p_right else WRONG) + [TOKENIZER.im_end_id])
        else:
          full = RIGHT if RIGHT[:len(prefix)] == prefix else WRONG
          out.append(full[len(prefix):] + [TOKENIZER.im_end_id])
    return out

  def logprobs(self, prompts, completions):
    return [np.full(len(c), -1.0, np.float32) for c in completions]


def _settings(**kw):
  s = pts.pts_fields()
  s.num_rollouts = 32
  s.update(kw)
  return s


def test_pts_on_a_toy_model_finds_the_planted_token_and_writes_its_pair(tmp_path):
  questions = [QUESTION, {"id": "q1", "question": "What is 3 + 4 again?", "answer": "7"}]
  out = str(tmp_path / "pairs.jsonl")
  summary = pts.run(ToyRoller(_settings()), questions, out, _settings(), progress=None)
  assert summary["searched"] == 2 and summary["merged"]
  pairs = [json.loads(line) for line in open(out)]
  assert len(pairs) == 2
  prompt = rollouts.question_prompt(QUESTION)
  first = pairs[0]
  assert first["prompt_ids"] == prompt and first["position"] == 0  # the pivot is the first token
  assert first["chosen_ids"] == [RIGHT[0]] and first["rejected_ids"] == [WRONG[0]]
  assert first["p_before"] == pytest.approx(0.5, abs=0.25) and first["p_after"] in (0.0, 1.0)
  log = jsonl_log.read(out + ".log.jsonl", "question_id")
  assert log["q0"]["pivots"][0]["position"] == 0 and log["q0"]["searched"]


def test_questions_outside_the_band_are_not_searched(tmp_path):
  out = str(tmp_path / "pairs.jsonl")
  summary = pts.run(ToyRoller(_settings(), p_right=1.0), [QUESTION], out, _settings(), progress=None)
  assert summary["searched"] == 0 and summary["pairs"] == 0 and open(out).read() == ""


def test_a_cut_log_resumes_to_the_same_pairs_and_processes_merge_to_one_file(tmp_path):
  questions = [{**QUESTION, "id": f"q{i}", "question": f"What is 3 + 4? ({i})"} for i in range(5)]
  settings = _settings(questions_per_round=2)
  straight = str(tmp_path / "straight.jsonl")
  pts.run(ToyRoller(settings), questions, straight, settings, progress=None)
  resumed = str(tmp_path / "resumed.jsonl")
  pts.run(ToyRoller(settings), questions, resumed, settings, progress=None)
  log = open(resumed + ".log.jsonl").read().splitlines(True)
  open(resumed + ".log.jsonl", "w").write("".join(log[:3]) + log[3][:20])  # killed mid-line
  roller = ToyRoller(settings)
  pts.run(roller, questions, resumed, settings, progress=None)
  assert roller.rollouts > 0 and open(resumed).read() == open(straight).read()
  split = str(tmp_path / "split.jsonl")
  results = [pts.run(ToyRoller(settings), questions, split, settings, i, 2, progress=None) for i in range(2)]
  assert [r["merged"] for r in results] == [False, True]
  assert open(split).read() == open(straight).read()


def test_question_files_and_settings_are_checked_naming_file_line_and_field(tmp_path):
  bad = {"not json": "{", "no question": '{"answer": "1"}', "python without tests":
         '{"question": "q", "kind": "python"}', "duplicate id": '{"id": 1, "question": "q", "answer": "1"}\n'
         '{"id": 1, "question": "r", "answer": "2"}'}
  messages = {"not json": "not JSON", "no question": "needs 'question'", "python without tests":
              "kind 'python' needs 'tests'", "duplicate id": "id '1' already on line 1"}
  for name, text in bad.items():
    path = tmp_path / "q.jsonl"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=rf"{path}:\d: .*{messages[name]}"):
      pts.read_questions(str(path))
  with pytest.raises(ValueError, match=r"pts.p_min: must be <= pts.p_max"):
    pts.check_settings(_settings(p_min=0.9, p_max=0.5))
  with pytest.raises(ValueError, match=r"pts.num_rollouts: must be >= 1"):
    pts.check_settings(_settings(num_rollouts=0))
  with pytest.raises(ValueError, match=r"unknown field pts.p_gapp \(did you mean p_gap"):
    pts.check_settings(ml_collections.ConfigDict({**_settings().to_dict(), "p_gapp": 0.1}))


def test_cli_on_a_real_model_searches_with_the_sampler_s_own_rollouts(tmp_path):
  import jax

  from phi4_jax import hf, inference, model
  cfg = model.ModelConfig.preset("test", max_seq_len=128)
  hf_dir = str(tmp_path / "hf")
  hf.save(cfg, model.init(cfg, jax.random.key(0)), hf_dir)
  questions = tmp_path / "q.jsonl"
  questions.write_text(json.dumps(QUESTION) + "\n")
  out = tmp_path / "pairs.jsonl"
  pts.main([f"--hf_dir={hf_dir}", f"--questions={questions}", f"--out={out}", "--settings.num_rollouts=4",
            "--settings.max_new_tokens=6", "--settings.p_min=0", "--settings.p_max=1", "--settings.max_batch=8"])
  (result,) = jsonl_log.read(str(out) + ".log.jsonl", "question_id").values()
  assert result["searched"] and result["p_success"] == 0.0 and out.read_text() == ""
  cfg, params = inference.load(hf_dir)
  (key,) = rollouts.sample_keys([("q0", 0)], 4)
  first = inference.generate(params, cfg, [rollouts.question_prompt(QUESTION)], max_new_tokens=6,
                             temperature=1.0, num_samples=4, stop_ids=rollouts.STOP_IDS,
                             sample_ids=[key])[0]
  assert result["solution_ids"] == rollouts.content(first)  # the searched solution is rollout 0


@pytest.mark.parametrize("tool", ["pts", "judge"])
def test_a_setting_has_the_same_name_on_the_command_and_in_a_recipe(tool, capsys):
  """`--settings.<name>` on the command is `--config.<stage>.settings.<name>` in a recipe; the old
  `--<name>` still sets it, with a deprecation line."""
  import importlib
  import re

  from phi4_jax.posttrain import stages
  module = importlib.import_module(f"phi4_jax.posttrain.{tool}")
  with pytest.raises(SystemExit):
    (pts.parse_args if tool == "pts" else module.main)(["--help"])
  shown = set(re.findall(r"--(settings\.\w+)", capsys.readouterr().out))
  assert shown == {f"settings.{name}" for name in stages.stage_fields(tool).settings}
  args = pts.parse_args(["--hf_dir=h", "--questions=q", "--out=o", "--settings.p_gap=0.3", "--num_rollouts=8"])
  assert (args.p_gap, args.num_rollouts) == (0.3, 8)
  assert capsys.readouterr().err.strip() == ("python -m phi4_jax.posttrain.pts: --num_rollouts is deprecated; "
                                             "use --settings.num_rollouts")

"""Bad input is named, file:line or flag, before a model loads (issue #24, item 7). Every command
here gets a model path that does not exist: an error about the input, not about the model, shows
the check ran first."""

import json
import os
import pickle

import pytest

from phi4_jax import generate
from phi4_jax.data import decontam
from phi4_jax.eval import __main__ as eval_cli
from phi4_jax.eval import humaneval
from phi4_jax.posttrain import judge, pts
from phi4_jax.posttrain.openai_http import Endpoint

NO_MODEL = "/nonexistent/model"


def _bad_utf8(path, first: dict) -> str:
  path.write_bytes(json.dumps(first).encode() + b"\n" + b'{"question": "caf\xff"}\n')
  return str(path)


@pytest.mark.parametrize("command", ["generate", "pts", "judge", "eval", "humaneval", "decontam"])
def test_invalid_utf8_names_the_file_and_line(tmp_path, command, capsys):
  good = {"prompt": "a", "question": "q", "answer": "1", "task_id": "HumanEval/0", "completion": "x"}
  path = _bad_utf8(tmp_path / "in.jsonl", good)
  out = str(tmp_path / "out.jsonl")
  run = {
      "generate": lambda: generate.main([f"--hf_dir={NO_MODEL}", f"--prompts_file={path}", f"--output={out}"]),
      "pts": lambda: pts.main([f"--hf_dir={NO_MODEL}", f"--questions={path}", f"--out={out}"]),
      "judge": lambda: judge.main([f"--prompts={path}", f"--out={out}", f"--responder=hf:{NO_MODEL}"]),
      "eval": lambda: eval_cli.main([f"--hf_dir={NO_MODEL}", "--eval.tasks=answers", f"--eval.answers_file={path}"]),
      "humaneval": lambda: humaneval.main([f"--completions={path}"]),
      "decontam": lambda: decontam.run(path, "experiments/pretrain.py:test", str(tmp_path / "d"), progress=None),
  }[command]
  with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 \(byte 0xff at column \d+\)"):
    run()


@pytest.mark.parametrize("record, message", [
    ({"question": 5, "answer": "1"}, r"'question' must be non-empty text, got int 5"),
    ({"messages": "hello", "answer": "1"}, r"'messages' must be a list of \{'role', 'content'\} messages, got str"),
    ({"messages": [{"role": "user", "content": 5}], "answer": "1"}, r"'messages'\[0\]\['content'\] must be a str"),
    ({"question": "q", "kind": "python", "tests": 5}, r"'tests' must be Python code \(text\), got int"),
    ({"question": "q", "answer": ["1"]}, r"'answer' must be text or a number, got list"),
])
def test_question_fields_of_the_wrong_type_are_refused(tmp_path, record, message):
  path = tmp_path / "q.jsonl"
  path.write_text(json.dumps(record) + "\n")
  with pytest.raises(ValueError, match=rf"{path}:1: {message}"):
    pts.main([f"--hf_dir={NO_MODEL}", f"--questions={path}", f"--out={tmp_path / 'o.jsonl'}"])
  with pytest.raises(ValueError, match=rf"{path}:1: {message}"):
    judge.main([f"--prompts={path}", f"--out={tmp_path / 'j.jsonl'}", f"--responder=hf:{NO_MODEL}"])


def test_prompt_ids_must_be_token_ids(tmp_path):
  path = tmp_path / "p.jsonl"
  for ids in ([1.7, 2.2], [], [-1], [100352], "12"):
    path.write_text(json.dumps({"prompt_ids": ids}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:1: 'prompt_ids' must be a non-empty list of token ids"):
      generate.main([f"--hf_dir={NO_MODEL}", f"--prompts_file={path}", f"--output={tmp_path / 'o.jsonl'}"])


@pytest.mark.parametrize("argv, message", [
    (["--batch_prompts=-3"], "argument --batch_prompts: must be >= 1, got -3"),
    (["--batch_prompts=0"], "argument --batch_prompts: must be >= 1, got 0"),
    (["--num_samples=0"], "argument --num_samples: must be >= 1, got 0"),
    (["--top_p=0"], "argument --top_p: must be in (0, 1], got 0"),
    (["--max_new_tokens=abc"], "argument --max_new_tokens: expected an integer, got 'abc'"),
])
def test_generate_flags_are_checked(tmp_path, capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    generate.main([f"--hf_dir={NO_MODEL}", "--prompt=a", *argv])
  assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--process_index=3", "--process_count=2"], "--process_index=3: must be < --process_count=2"),
    (["--process_index=0", "--process_count=0"], "argument --process_count: must be >= 1, got 0"),
    (["--process_index=1"], "--process_index and --process_count go together"),
    (["--settings.num_rollouts=0"], "argument --settings.num_rollouts: must be >= 1, got 0"),
])
def test_pts_process_flags_and_settings_are_checked(tmp_path, capsys, argv, message):
  with pytest.raises((SystemExit, ValueError)) as info:
    pts.main([f"--hf_dir={NO_MODEL}", "--questions=q.jsonl", "--out=o.jsonl", *argv])
  text = str(info.value) if isinstance(info.value, ValueError) else capsys.readouterr().err
  assert message in text


@pytest.mark.parametrize("k", ["0", "-1", "1,0"])
def test_humaneval_k_must_be_positive(tmp_path, k):
  with pytest.raises(ValueError, match="--k: every k must be >= 1"):
    humaneval.main([f"--completions={tmp_path / 'c.jsonl'}", f"--k={k}"])


def test_endpoint_options_name_themselves():
  with pytest.raises(ValueError, match=r"timeout_s='abc' is not a number"):
    Endpoint.parse("http://h/v1,model=m,timeout_s=abc")
  with pytest.raises(ValueError, match=r"retries='x' is not an integer"):
    judge.main(["--prompts=p.jsonl", "--out=o.jsonl", "--responder=http://h/v1,model=m,retries=x"])


def test_eval_checks_its_out_folder_and_its_items_before_the_model(tmp_path):
  with pytest.raises(ValueError, match=r"--out=.*missing/r.json: .*missing is not a folder"):
    eval_cli.main([f"--hf_dir={NO_MODEL}", "--eval.tasks=answers", "--eval.answers_file=embedded:parity",
                   f"--out={tmp_path / 'missing' / 'r.json'}"])
  choices = tmp_path / "c.jsonl"
  choices.write_text(json.dumps({"question": "q", "choices": ["a", ""], "answer": 0}) + "\n")
  with pytest.raises(ValueError, match=rf"{choices}:1: 'choices' must be a list of at least 2 non-empty strings"):
    eval_cli.main([f"--hf_dir={NO_MODEL}", "--eval.tasks=choice", f"--eval.choice_file={choices}"])


def test_lm_eval_adapter_refuses_an_empty_continuation_and_a_bad_step():
  lm_eval_adapter = pytest.importorskip("phi4_jax.eval.lm_eval")
  with pytest.raises(ValueError, match=r"step='abc' is not a checkpoint step"):
    lm_eval_adapter.Phi4LM(workdir=NO_MODEL, step="abc")
  adapter = lm_eval_adapter.Phi4LM.__new__(lm_eval_adapter.Phi4LM)  # (no model: refused before scoring)
  with pytest.raises(ValueError, match="empty continuation"):
    adapter._loglikelihood_tokens([(None, [1, 2], [])])


def test_decontam_rebuilds_a_truncated_index_and_its_flags_name_only_the_copies(tmp_path):
  from test_decontam import DOCS, ITEM  # noqa: F401  (the decontamination fixture's texts)
  bench = tmp_path / "bench.jsonl"
  bench.write_text(json.dumps({"id": "q1", "question": ITEM}) + "\n")
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in DOCS))
  spec = tmp_path / "cfg.py"
  spec.write_text("from phi4_jax.data import config as d\nfrom experiments.pretrain import get_config as base\n"
                  "def get_config(arg=''):\n  c = base('test')\n"
                  f"  c.data = d.data({{'plain': d.source('{src}/a.jsonl', 1.0)}}, cache_dir='{tmp_path}/cache')\n"
                  "  return c\n")
  out = tmp_path / "out"
  first = decontam.run(str(bench), f"{spec}:x", str(out), progress=None)
  index = out / "index.pkl"
  index.write_bytes(index.read_bytes()[:len(index.read_bytes()) // 2])  # cut short by a kill
  with pytest.raises(Exception):
    pickle.loads(index.read_bytes())
  again = decontam.run(str(bench), f"{spec}:x", str(out), progress=None)
  assert again["sources"] == first["sources"] and pickle.loads(index.read_bytes())["index"]
  (flag,) = again["flags"]
  assert flag == f"--config.data.sources.plain.globs={out}/plain/a.jsonl"  # (not a glob of the reports)
  assert os.path.exists(f"{out}/plain/a.jsonl.report.jsonl")


def test_identical_greedy_samples_are_said(capsys):
  generate.parse_args([f"--hf_dir={NO_MODEL}", "--prompt=a", "--num_samples=2"])
  assert "--num_samples=2 at --temperature=0 gives 2 identical greedy samples" in capsys.readouterr().err

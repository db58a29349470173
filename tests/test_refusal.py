"""Refusal data: the SFT and DPO rules on a toy model whose accuracy per question is planted, the
5-token cut, the templates and a toy teacher, resume after a kill, the command on a tiny model with
an endpoint teacher, and the recipe stage."""

import json
import os
import zlib

import pytest

from phi4_jax import configs
from phi4_jax.posttrain import refusal, rollouts, stages
from phi4_jax.posttrain.rollouts import TOKENIZER
from phi4_jax.recipe import runner as recipe
from phi4_jax.store import fingerprint

T, F = True, False
# question id -> which of its 8 samples are right (p_correct = the share of True)
PLANTED = {"A": [T] * 8, "B": [F, T, T, F, T, T, T, T], "C": [F, F, F, F, F, T, F, F], "D": [F] * 8,
           "E": [T, F] * 4, "F": [F] * 8, "G": [F, F, T, F, F, F, T, F]}
QUESTIONS = [{"id": qid, "question": f"What is {i} + 4?", "answer": str(i + 4)} for i, qid in enumerate(PLANTED)]
REFUSAL_F = refusal.REFUSALS[zlib.crc32(b"0\0F") % 4]  # F's template refusal (seed 0)


def right_text(record, s):
  return f"Adding the two numbers step by step gives {record['answer']}.\n\nFinal answer: {record['answer']}"


def wrong_text(record, s):
  if record["id"] == "D":  # empty: its cut is the <|im_end|> that ended it
    return ""
  if record["id"] == "F":  # starts with F's refusal: its refusal > wrong pair is the same after the cut
    return REFUSAL_F + " Anyway, final answer: 0"
  return f"I believe sample {s} gives {int(record['answer']) + 1}.\n\nFinal answer: {int(record['answer']) + 1}"


def first5(text):
  """A response's first 5 tokens by hand: re-tokenized, then the <|im_end|> the model ended it with."""
  return (TOKENIZER.encode_ordinary(text) + [TOKENIZER.im_end_id])[:5]


class PlantedModel:
  """respond() like judge.py's policies: sample s of a question is right iff PLANTED says so."""

  def __init__(self):
    self.asked = []

  def respond(self, records, n):
    self.asked += [r["id"] for r in records]
    return [[(right_text if PLANTED[r["id"]][s] else wrong_text)(r, s) for s in range(n)] for r in records]


def _settings(**kw):
  s = refusal.refusal_fields()
  s.update(kw)
  return s


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("refusal"))
  summary = refusal.run(PlantedModel(), None, QUESTIONS, out, _settings(questions_per_round=4), progress=None)
  read = lambda name: [json.loads(line) for line in open(os.path.join(out, name))]
  return out, summary, read(refusal.SFT), read(refusal.PAIRS)


def test_p_correct_is_the_share_of_right_samples(made):
  out, summary, _, _ = made
  log = {json.loads(line)["question_id"]: json.loads(line) for line in open(os.path.join(out, refusal.LOG))}
  assert {q: log[q]["p_correct"] for q in PLANTED} == {"A": 1.0, "B": 0.75, "C": 0.125, "D": 0.0, "E": 0.5,
                                                       "F": 0.0, "G": 0.25}
  assert summary["p_correct_histogram"] == {"0/8": 2, "1/8": 1, "2/8": 1, "3/8": 0, "4/8": 1, "5/8": 0, "6/8": 1,
                                            "7/8": 0, "8/8": 1}


def test_sft_answers_where_usually_right_refuses_where_usually_wrong_and_refuses_every_bogus_question(made):
  _, summary, sft, _ = made
  q = {r["id"]: r for r in QUESTIONS}
  main = [r for r in sft if r["rule"] != "bogus"]
  # A (8/8) and B (6/8 = usually_right 0.75): the first right answer (B's is sample 1); C (1/8),
  # D and F (0/8) and G (2/8 = usually_wrong 0.25): the refusal; E (4/8): nothing
  assert [(r["question_id"], r["rule"], r["p_correct"]) for r in main] == [
      ("A", "answer", 1.0), ("B", "answer", 0.75), ("C", "refusal", 0.125), ("D", "refusal", 0.0),
      ("F", "refusal", 0.0), ("G", "refusal", 0.25)]
  assert main[1]["messages"] == [{"role": "user", "content": "What is 1 + 4?"},
                                 {"role": "assistant", "content": right_text(q["B"], 1)}]
  assert main[2]["messages"][1] == {"role": "assistant", "content": refusal.REFUSALS[zlib.crc32(b"0\0C") % 4]}
  bogus = [r for r in sft if r["rule"] == "bogus"]
  assert [r["question_id"] for r in bogus] == list(PLANTED)  # one per question, whatever its p_correct
  for r in bogus:  # the documented template, by hand: ENTITIES[crc32(seed, id, k) % 6]
    entity = refusal.ENTITIES[zlib.crc32(f"0\0{r['question_id']}\0{0}".encode()) % 6]
    assert r["bogus_id"] == f"{r['question_id']}/bogus-0"
    assert r["messages"][0]["content"] == (f"What is the {entity} of the answer to this question? "
                                           f"{q[r['question_id']]['question']}")
    assert entity in r["messages"][1]["content"] and r["messages"][1]["role"] == "assistant"
  assert summary["sft_by_rule"] == {"answer": 2, "refusal": 4, "bogus": 7} and summary["sft_records"] == 13
  assert summary["bogus_questions"] == 7 and summary["bogus_dropped"] == 0
  assert summary["refusals_by"] == {"teacher": 0, "template": 14}


def test_pairs_follow_the_rules_and_each_side_is_its_first_five_tokens(made):
  _, summary, _, pairs = made
  q = {r["id"]: r for r in QUESTIONS}
  # right > refusal where p_correct > 0 (A, B, C, E, G); refusal > wrong where p_correct < 1 (B, C,
  # D, E, F, G); F's cut sides are the same tokens: dropped and counted
  assert [(p["question_id"], p["rule"]) for p in pairs] == [
      ("A", "correct_over_refusal"), ("B", "correct_over_refusal"), ("B", "refusal_over_wrong"),
      ("C", "correct_over_refusal"), ("C", "refusal_over_wrong"), ("D", "refusal_over_wrong"),
      ("E", "correct_over_refusal"), ("E", "refusal_over_wrong"), ("G", "correct_over_refusal"),
      ("G", "refusal_over_wrong")]
  assert summary["pairs_by_rule"] == {"correct_over_refusal": 5, "refusal_over_wrong": 5}
  assert summary["pairs"] == 10
  assert summary["pairs_dropped"] == {"same_after_cut": 1}
  first_right = {"A": 0, "B": 1, "C": 5, "E": 0, "G": 2}
  first_wrong = {"B": 0, "C": 0, "D": 0, "E": 1, "G": 0}
  for p in pairs:
    record, rid = q[p["question_id"]], p["question_id"]
    refusal_text = refusal.REFUSALS[zlib.crc32(f"0\0{rid}".encode()) % 4]
    if p["rule"] == "correct_over_refusal":
      full = (right_text(record, first_right[rid]), refusal_text)
    else:
      full = (refusal_text, wrong_text(record, first_wrong[rid]))
    assert [p["chosen_ids"], p["rejected_ids"]] == [first5(t) for t in full]
    if rid == "D":
      assert p["rejected_ids"] == [TOKENIZER.im_end_id] and p["rejected"] == "<|im_end|>"
    else:
      assert all(len(TOKENIZER.encode_ordinary(t)) > 5 for t in full)  # (each was cut)
      assert len(p["chosen_ids"]) == len(p["rejected_ids"]) == 5
    assert [p["chosen"], p["rejected"]] == [TOKENIZER.decode(p["chosen_ids"]), TOKENIZER.decode(p["rejected_ids"])]
    assert p["prompt_ids"] == rollouts.question_prompt(record)
    assert p["messages"] == [{"role": "user", "content": record["question"]}]
    assert p["p_correct"] == sum(PLANTED[rid]) / 8
  assert TOKENIZER.encode_ordinary(REFUSAL_F)[:5] == TOKENIZER.encode_ordinary(wrong_text(q["F"], 0))[:5]


def test_a_killed_run_resumes_to_the_same_files(made, tmp_path):
  straight, _, _, _ = made
  out = str(tmp_path / "resumed")
  refusal.run(PlantedModel(), None, QUESTIONS, out, _settings(questions_per_round=2), progress=None)
  log = open(os.path.join(out, refusal.LOG)).read().splitlines(True)
  open(os.path.join(out, refusal.LOG), "w").write("".join(log[:2]) + log[2][:30])  # killed mid-line
  os.remove(os.path.join(out, refusal.SFT))
  model = PlantedModel()
  refusal.run(model, None, QUESTIONS, out, _settings(questions_per_round=2), progress=None)
  assert model.asked == ["C", "D", "E", "F", "G"]  # A and B were logged
  for name in (refusal.SFT, refusal.PAIRS):
    assert open(os.path.join(out, name)).read() == open(os.path.join(straight, name)).read()


class ToyTeacher:
  """complete() like judge.py's policies. Refusals: "I can't answer that reliably." (for B only on
  the second ask; never for A's bogus variant, which falls back to a template). Bogus variants
  rated 4, except C's (rated 2: dropped) and D's (garbage first, then a good one)."""

  def __init__(self):
    self.requests = []

  def complete(self, conversations, ids, attempt):
    replies = []
    for messages, rid in zip(conversations, ids):
      self.requests.append((rid, attempt))
      key, kind = rid.split("\0")
      if kind == "refusal":
        bad = key == "A/bogus-0" or key == "B" and attempt == 0
        replies.append("  " if bad else "I can't answer that reliably.")
      else:
        assert messages[0]["content"].startswith('Write a "bogus" variant') and "What is" in messages[0]["content"]
        quality = 2 if key == "C/bogus-0" else 4
        replies.append("what?" if key == "D/bogus-0" and attempt == 0 else
                       f"Question: What is the Zorblax number of {key[0]}?\nQuality: {quality}")
    return replies


def test_a_teacher_writes_refusals_and_rated_bogus_questions(tmp_path):
  teacher = ToyTeacher()
  summary = refusal.run(PlantedModel(), teacher, QUESTIONS, str(tmp_path), _settings(), progress=None)
  sft = [json.loads(line) for line in open(tmp_path / refusal.SFT)]
  bogus = {r["question_id"]: r["messages"] for r in sft if r["rule"] == "bogus"}
  assert sorted(bogus) == ["A", "B", "D", "E", "F", "G"]  # C's variant was rated 2 < bogus_min_quality 3
  assert bogus["D"][0]["content"] == "What is the Zorblax number of D?"
  assert bogus["B"][1]["content"] == "I can't answer that reliably."
  assert bogus["A"][1]["content"] == refusal.REFUSALS[zlib.crc32(b"0\0A/bogus-0") % 4]  # asked 3 times
  refusals = [r["messages"][1]["content"] for r in sft if r["rule"] == "refusal"]
  assert refusals == ["I can't answer that reliably."] * 4  # C, D, F, G
  assert summary["bogus_questions"] == 6 and summary["bogus_dropped"] == 1
  assert summary["refusals_by"] == {"teacher": 7 + 5, "template": 1}
  assert ("B\0refusal", 1) in teacher.requests and ("D/bogus-0\0bogus", 1) in teacher.requests
  assert ("A/bogus-0\0refusal", 2) in teacher.requests and ("A\0refusal", 1) not in teacher.requests


def test_settings_are_checked():
  with pytest.raises(ValueError, match=r"refusal.usually_wrong: must be < refusal.usually_right=0.5, got 0.5"):
    refusal.check_settings(_settings(usually_right=0.5, usually_wrong=0.5))
  with pytest.raises(ValueError, match=r"refusal.pair_tokens: must be >= 1, got 0"):
    refusal.check_settings(_settings(pair_tokens=0))
  c = configs.load("experiments/refusal.py:test")
  c.teacher = "ftp://nowhere"
  with pytest.raises(ValueError, match=r"config.teacher: 'ftp://nowhere': expected workdir:PATH"):
    stages.validate(c)
  assert "refusal_prompt.txt" in open(os.path.join(os.path.dirname(__file__), "..", "setup.py")).read()


def test_command_on_a_tiny_model_with_an_endpoint_teacher(tiny_hf_dir, openai_server, tmp_path, capsys):
  def reply(body):
    text = body["messages"][0]["content"]
    return "Question: What is the Quorble of 3?\nQuality: 5" if text.startswith("Write a") else "I cannot say."
  openai_server.reply = reply
  questions = tmp_path / "q.jsonl"
  questions.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS[:2]))
  out = tmp_path / "out"
  argv = [f"--hf_dir={tiny_hf_dir}", f"--questions={questions}", f"--out={out}", "--settings.num_samples=2",
          "--settings.max_new_tokens=6", "--settings.max_batch=8", "--settings.teacher_max_tokens=40",
          f"--teacher=http://127.0.0.1:{openai_server.server_address[1]}/v1,model=fake"]
  refusal.main(argv)
  summary = json.load(open(out / refusal.SUMMARY))
  assert json.loads(capsys.readouterr().out) == summary
  # the random model is never right: two refusals, two bogus questions, refusal > wrong for each
  assert summary["p_correct_histogram"] == {"0/2": 2, "1/2": 0, "2/2": 0}
  assert summary["sft_by_rule"] == {"answer": 0, "refusal": 2, "bogus": 2}
  assert summary["pairs"] + sum(summary["pairs_dropped"].values()) == 2
  assert summary["refusals_by"] == {"teacher": 4, "template": 0}
  assert {b["max_tokens"] for b, _ in openai_server.requests} == {40} and len(openai_server.requests) == 6
  for pair in map(json.loads, open(out / refusal.PAIRS)):
    assert pair["chosen_ids"] == first5("I cannot say.") == TOKENIZER.encode_ordinary("I cannot say.")[:4] + [
        TOKENIZER.im_end_id]
  log = [json.loads(line) for line in open(out / refusal.LOG)]
  for pair in map(json.loads, open(out / refusal.PAIRS)):
    (line,) = [x for x in log if x["question_id"] == pair["question_id"]]
    assert pair["rejected_ids"] == first5(line["samples"][0])
  before = {n: open(out / n).read() for n in (refusal.SFT, refusal.PAIRS, refusal.LOG)}
  refusal.main(argv)  # resumes: nothing to sample, the same files
  assert {n: open(out / n).read() for n in before} == before and len(openai_server.requests) == 6
  with pytest.raises(fingerprint.FingerprintError, match=r"settings.pair_tokens: 5 -> 3.*--overwrite"):
    refusal.main(argv + ["--settings.pair_tokens=3"])


def test_the_recipe_stage_writes_its_files_and_a_later_stage_reads_its_pairs(tiny_hf_dir, tmp_path):
  c = configs.load("experiments/refusal.py:test")
  c.init_from = tiny_hf_dir
  out = str(tmp_path / "refusal")
  summary = recipe.run(c, out)[0]
  assert stages.finished(out) and summary["stage"] == "refusal" and summary["questions"] == 4
  assert summary["sft_by_rule"]["bogus"] == 4 and summary["pairs"] >= 1
  assert stages.note(out).startswith(f"{summary['pairs']} pairs and {summary['sft_records']} SFT conversations")
  assert sum(1 for _ in open(os.path.join(out, "sft.jsonl"))) == summary["sft_records"]
  chain = configs.load("experiments/recipe.py:colab")
  with chain.unlocked():
    chain.stages = ("pretrain", "midtrain", "sft", "refusal", "pts", "dpo_pts")
    chain.refusal = configs.load("experiments/refusal.py:colab")
    chain.dpo_pts.data.sources.refusal = chain.dpo_pts.data.sources.pts.copy_and_resolve_references()
    chain.dpo_pts.data.sources.refusal.globs = "stage:refusal"
  recipe.link(chain, str(tmp_path / "w"))
  assert chain.refusal.init_from == chain.pts.init_from == str(tmp_path / "w" / "sft")
  assert chain.dpo_pts.data.sources.refusal.globs == str(tmp_path / "w" / "refusal" / "pairs.jsonl")

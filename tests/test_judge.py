"""Judge-guided pairs: strict verdicts, the pair rules on hand-built score tables, the rule-based
judge, and the OpenAI-compatible client against a fake server on loopback (faults included)."""

import http.server
import json
import os
import threading

import numpy as np
import pytest
from conftest import FakeOpenAI

from phi4_jax.posttrain import judge, judge_rules
from phi4_jax.posttrain.openai_http import Endpoint, EndpointError


def test_verdicts_parse_strictly():
  assert judge_rules.parse_scores("accuracy: 4\nstyle: 5\n\ndetail: 2\n") == {"accuracy": 4, "style": 5, "detail": 2}
  assert judge_rules.parse_scores("Accuracy : 1\nSTYLE:1\ndetail:  3") == {"accuracy": 1, "style": 1, "detail": 3}
  for bad in ["accuracy: 4\nstyle: 5", "accuracy: 6\nstyle: 5\ndetail: 2", "accuracy: 4\nstyle: 5\ndetail: 2\nnice!",
              "accuracy: 4\naccuracy: 5\ndetail: 2", "accuracy: 4.5\nstyle: 5\ndetail: 2", "The scores: 4, 5, 2", ""]:
    assert judge_rules.parse_scores(bad) is None, bad


S = lambda a, s, d: {"accuracy": a, "style": s, "detail": d}


@pytest.mark.parametrize("table, expected", [
    ([S(5, 1, 1), S(3, 5, 5)], (0, 1, "accuracy")),  # accuracy first, whatever the rest
    ([S(3, 2, 2), S(3, 5, 4), S(3, 3, 3)], (1, 0, "overall")),  # accuracy tie: the mean decides
    ([S(4, 2, 3), S(4, 3, 2)], None),  # a full tie: no pair
    ([S(2, 2, 2), S(5, 5, 5), S(1, 1, 1), S(5, 5, 5)], (1, 2, "accuracy")),  # ties: the earlier
    ([S(5, 5, 5)], None),
])
def test_pair_rules_on_hand_built_score_tables(table, expected):
  assert judge_rules.choose_pair([(f"r{i}", s) for i, s in enumerate(table)]) == expected


@pytest.mark.parametrize("responses, expected", [
    ([("", S(1, 1, 1)), ("Final answer: 7", S(5, 5, 1))], (1, 0, "accuracy")),  # an empty reply is one
    ([("a", None), ("b", S(1, 1, 1)), ("c", S(5, 1, 1))], (2, 1, "accuracy")),  # indices into all of them
    ([("a", None), ("b", S(5, 5, 5))], "fewer_than_two_scored"),
    ([("a", S(4, 2, 3)), ("b", S(4, 3, 2))], "tie"),
    ([("same", S(5, 5, 5)), ("c", S(3, 3, 3)), (" same\n", S(1, 1, 1))], "identical"),
])
def test_a_pair_is_two_different_scored_responses_whose_scores_differ(responses, expected):
  assert judge_rules.pick_pair(responses) == expected


def test_rule_based_judge_by_hand():
  record = {"question": "Solve 2x = 14.", "answer": "x = 7"}
  good = judge_rules.oracle_scores(record, "Divide by 2: x = 14 / 2 = 7.\n\nFinal answer: x = 7")
  assert good == {"accuracy": 5, "style": 5, "detail": 2}  # one true computation: 14 / 2 = 7
  assert judge_rules.oracle_scores(record, "Final answer: x = 8")["accuracy"] == 1
  # no final answer (-2), a repeated line (-1): style 2; and accuracy 1, though the last number is 7
  assert judge_rules.oracle_scores(record, "x = 7\nx = 7") == {"accuracy": 1, "style": 2, "detail": 1}
  # the answer is the last `Final answer:`'s; two statements, or text after it, cost a style point
  assert judge_rules.oracle_scores(record, "Final answer: x = 8\nFinal answer: x = 7") == S(5, 4, 1)
  assert judge_rules.oracle_scores(record, "Final answer: x = 7\nThat is all.") == S(5, 4, 1)
  assert judge_rules.oracle_scores(record, "Final answer:\n\nx = 7") == S(5, 5, 1)  # (the next line)
  # a repeated sentence costs a style point and counts once as a computation
  assert judge_rules.oracle_scores(record, "2 × 7 = 14. 2 × 7 = 14.\nFinal answer: x = 7") == S(5, 4, 2)
  assert judge_rules.oracle_scores({"question": "Tell me a story."}, "Once upon a time.") == S(3, 3, 1)
  assert judge_rules.oracle_scores({"question": "Pick.", "answer": "B", "kind": "multiple_choice"},
                                   "It is the second one.\nFinal answer: (B)") == S(5, 5, 1)
  for empty in ("", "  \n "):  # a real answer, and the worst one, with or without ground truth
    assert judge_rules.oracle_scores(record, empty) == S(1, 1, 1)
    assert judge_rules.oracle_scores({"question": "Hi"}, empty) == S(1, 1, 1)


def test_rule_based_judge_scores_worked_solutions_high_and_gibberish_low():
  """issue #25: gibberish ending in the right number got accuracy 5, and any text style 5."""
  from phi4_jax.data import synthetic
  from phi4_jax.posttrain import oracles
  from phi4_jax.tokenizer import Phi4Tokenizer
  ex = synthetic.exercise(5)
  assert ex["topic"] == "arithmetic" and ex["params"] == {"a": 57, "b": 18, "c": 41, "d": 14}
  # 18 × 41 = 738, 57 + 738 = 795 and 795 − 14 = 781: three true computations
  assert synthetic.worked_solution(ex) == (
      "Multiplication comes before addition and subtraction: 18 × 41 = 738. Then 57 + 738 = 795, and "
      "795 − 14 = 781.\n\nFinal answer: 781")
  assert judge_rules.oracle_scores(ex, synthetic.worked_solution(ex)) == S(5, 5, 4)
  for i in range(240):  # every topic's worked solutions (those without computations: detail 1)
    ex = synthetic.exercise(i)
    scores = judge_rules.oracle_scores(ex, synthetic.worked_solution(ex))
    assert scores["accuracy"] == scores["style"] == 5, (ex["topic"], scores)
    bare = ex["topic"] in ("rates", "quadratic equation", "modular arithmetic")
    assert (scores["detail"] == 1) if bare else (scores["detail"] >= 2), (ex["topic"], scores)
  ex = synthetic.exercise(5)
  ids = np.random.default_rng(0).integers(0, 100_000, 40).tolist()
  gibberish = Phi4Tokenizer().decode(ids)
  assert oracles.check(ex, f"{gibberish} 781")  # the old rule: the last number is right
  assert judge_rules.oracle_scores(ex, f"{gibberish} 781")["accuracy"] == 1  # no answer stated
  assert judge_rules.oracle_scores(ex, f"{gibberish}\n\nFinal answer: 781") == S(5, 1, 1)
  assert judge_rules.oracle_scores(ex, f"{gibberish}\n\nFinal answer: 782") == S(1, 1, 1)
  words = "blorf qzxv trumple vanq glib snorp wexl " * 2  # letters, but not words
  assert judge_rules.oracle_scores(ex, f"{words}18 × 41 = 738\nFinal answer: 781") == S(5, 1, 1)
  repeated = "Then 57 + 738 = 795 795 795 795."  # a word 4 times in a row: degenerate
  assert judge_rules.oracle_scores(ex, f"{repeated}\nFinal answer: 781") == S(5, 1, 1)


@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 7", 1), ("3 + 4 = 8", 0), ("x = 14 / 2 = 7.", 1), ("84 = 2 × 36 + 12; 36 = 3 × 12 + 0.", 2),
    ("25/100 × 40 = 1000/100 = 10", 2), ("10 − (−13) = 23", 1), ("10 / 3 = 3.33", 1), ("10 / 3 = 3.4", 0),
    ("5 = 5", 0), ("2 + 2 = 4 and again 2 + 2 = 4", 1), ("1 / 0 = 1", 0), ("2 <= 2 + 1", 0),
    ("(x − (2))(x − (3)) = 0", 0), ("Then 3 + 30 = 33, and 33 − 4 = 29.", 2), ("it is 5. 3 + 4 = 7", 1),
])
def test_true_computations_by_hand(text, expected):
  assert judge_rules.true_equations(text) == expected


def _endpoint(srv, **kw):
  return Endpoint.parse(f"http://127.0.0.1:{srv.server_address[1]}/v1,model=fake,timeout_s=0.5,retries=3",
                        backoff_s=0.0, **kw)


def test_client_retries_a_500_a_timeout_and_a_malformed_body(openai_server, monkeypatch):
  server = openai_server
  monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
  server.script = ["500", "hang", "malformed"]
  assert _endpoint(server).chat([{"role": "user", "content": "hi"}]) == "hello"
  assert len(server.requests) == 4
  body, auth = server.requests[-1]
  assert body["model"] == "fake" and body["messages"][0]["content"] == "hi" and auth == "Bearer sk-test"
  server.script = ["500"] * 4
  with pytest.raises(EndpointError, match=r"127\.0\.0\.1:\d+/v1 \(fake\): HTTP 500 after 4 attempt"):
    _endpoint(server).chat([{"role": "user", "content": "hi"}])


def test_endpoint_specs_are_checked():
  with pytest.raises(ValueError, match="needs model=NAME"):
    Endpoint.parse("http://h/v1")
  with pytest.raises(ValueError, match="retries must be >= 0"):
    Endpoint.parse("http://h/v1,model=x,retries=-1")
  with pytest.raises(ValueError, match="unknown option 'modle=x'"):
    Endpoint.parse("http://h/v1,modle=x")
  with pytest.raises(ValueError, match="expected workdir:PATH, hf:PATH or http"):
    judge.policy("ftp://h", judge.judge_fields())


def test_judge_run_over_http_pairs_by_the_rules_retries_and_counts_unparsable_verdicts(openai_server, tmp_path):
  server = openai_server
  replies = iter(["Final answer: 7", "Final answer: 8", "Final answer: 7", "Final answer: 7"] * 4)

  def reply(body):
    content = body["messages"][-1]["content"]
    if content.startswith("You are grading"):
      response = content.split("Response:\n", 1)[1].split("\n\nReply with", 1)[0]
      if response == "Final answer: 8":
        return "accuracy: 1\nstyle: 3\ndetail: 1"
      return "I like it" if "q1" in content else "accuracy: 5\nstyle: 4\ndetail: 2"
    return next(replies)
  server.reply = reply
  settings = judge.judge_fields()
  settings.num_responses, settings.judge_retries, settings.concurrency = 2, 1, 1
  spec = f"http://127.0.0.1:{server.server_address[1]}/v1,model=fake"
  responders = [judge.policy(spec, settings, "a"), judge.policy(spec, settings, "b")]
  prompts = [{"id": "q0", "question": "What is 3 + 4? (q0)"}, {"id": "q1", "question": "What is 3 + 4? (q1)"}]
  out = str(tmp_path / "pairs.jsonl")
  summary = judge.run(responders, judge.policy(spec, settings, "judge"), prompts, out, settings, progress=None)
  # q0's responses are 7, 8 (from a), 7, 8 (from b); q1's are all 7 and their verdicts never
  # parse: each asked twice, then dropped and counted
  assert summary == {"prompts": 2, "pairs": 1, "accuracy_pairs": 1, "overall_pairs": 0, "dropped_responses": 4,
                     "prompts_without_pair": {"fewer_than_two_scored": 1, "tie": 0, "identical": 0}}
  verdict_requests = [b for b, _ in server.requests if b["messages"][-1]["content"].startswith("You are grading")]
  assert len(verdict_requests) == 4 + 4 * 2
  (pair,) = [json.loads(line) for line in open(out)]
  assert pair["chosen"] == "Final answer: 7" and pair["rejected"] == "Final answer: 8"
  assert pair["messages"] == [{"role": "user", "content": "What is 3 + 4? (q0)"}] and pair["rule"] == "accuracy"
  assert pair["chosen_scores"]["accuracy"] == 5 and pair["rejected_scores"]["accuracy"] == 1
  n = len(server.requests)
  assert judge.run(responders, "oracle", prompts, out, settings, progress=None) == summary  # resumed
  assert len(server.requests) == n


def test_retry_after_is_honoured_and_timeout_bounds_the_whole_request(openai_server, monkeypatch):
  """issue #24, item 5: retries waited +1, +2, +4 s against `Retry-After: 10`, and a server dripping
  a byte every 0.2 s held a request for as long as it liked (each read was within timeout_s)."""
  from phi4_jax.posttrain import openai_http
  waits = []
  monkeypatch.setattr(openai_http.time, "sleep", waits.append)
  openai_server.script = ["429 retry-after=10", "429 retry-after=Wed, 21 Oct 2015 07:28:00 GMT"]
  assert _endpoint(openai_server).chat([{"role": "user", "content": "hi"}]) == "hello"
  assert waits == [10.0, 0.0]  # (a date in the past: no wait; backoff_s is 0 here)
  openai_server.script = ["drip"]
  endpoint = Endpoint.parse(f"http://127.0.0.1:{openai_server.server_address[1]}/v1,model=fake,timeout_s=1,retries=0")
  with pytest.raises(EndpointError, match=r"TimeoutError: no whole response within timeout_s=1.0 after 1 attempt"):
    endpoint.chat([{"role": "user", "content": "hi"}])


def test_a_redirect_is_not_followed_and_the_key_stays_home(openai_server, monkeypatch):
  other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
  other.script, other.default, other.requests, other.release = [], "ok", [], threading.Event()
  other.reply = lambda body: "elsewhere"
  threading.Thread(target=other.serve_forever, daemon=True).start()
  try:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    openai_server.script = [f"302 location=http://127.0.0.1:{other.server_address[1]}/v1/chat/completions"]
    with pytest.raises(EndpointError, match=r"HTTP 302 \(a redirect to http://127.0.0.1:\d+/v1/chat/completions: "
                                            r"not followed\) after 1 attempt"):
      _endpoint(openai_server).chat([{"role": "user", "content": "hi"}])
    assert other.requests == []
  finally:
    other.shutdown()
    other.server_close()


def test_prompts_whose_requests_failed_are_not_done_and_a_rerun_asks_again(openai_server, tmp_path):
  """issue #24, item 5: a request failing past its retries became "no response" and its prompt
  was logged as done: an outage lost prompts for good, with exit status 0."""
  settings = judge.judge_fields()
  settings.num_responses, settings.concurrency = 2, 1
  spec = f"http://127.0.0.1:{openai_server.server_address[1]}/v1,model=fake,retries=0"
  answers = iter(["Final answer: 7", "Final answer: 8"] * 8)
  openai_server.reply = lambda body: next(answers)
  prompts = [{"id": f"q{i}", "question": "What is 3 + 4?", "answer": "7"} for i in range(3)]
  out = str(tmp_path / "pairs.jsonl")
  openai_server.script = ["ok", "ok", "500"]  # q1's first response fails
  with pytest.raises(EndpointError, match=r"judge: 1 of 3 prompts failed and are not done \(first: q1: "
                                          r"http://127.0.0.1:\d+/v1 \(fake\): HTTP 500.*rerun to ask"):
    judge.run([judge.policy(spec, settings, "a")], "oracle", prompts, out, settings, progress=None)
  logged = [json.loads(line)["prompt_id"] for line in open(out + ".log.jsonl")]
  assert logged == ["q0", "q2"] and not os.path.exists(out)  # no pairs file from a partial run
  summary = judge.run([judge.policy(spec, settings, "a")], "oracle", prompts, out, settings, progress=None)
  assert summary["prompts"] == 3 and summary["pairs"] == 3
  assert [json.loads(line)["prompt_id"] for line in open(out)] == ["q0", "q1", "q2"]


class _Scripted:
  """A responder with fixed replies per prompt, or a judge whose verdicts come from a table (a
  list of verdicts is handed out in turn; an unparsable one is asked again, then dropped)."""

  def __init__(self, name, replies=None, verdicts=None):
    self.name, self.replies, self.verdicts = name, replies, verdicts

  def respond(self, records, n):
    return [self.replies[r["id"]][:n] for r in records]

  def complete(self, conversations, ids, attempt):
    out = []
    for messages in conversations:
      response = messages[-1]["content"].split("Response:\n", 1)[1].split("\n\nReply with", 1)[0]
      verdict = self.verdicts[response]
      out.append(verdict.pop(0) if isinstance(verdict, list) else verdict)
    return out


def test_empty_replies_pair_and_prompts_without_a_pair_are_counted_by_reason(tmp_path):
  """issue #25: a collapsed model's empty answers were dropped by the DPO reader (12 of 13 pairs)
  while the summary said 13 pairs. An empty reply is a response; no pair from a tie, from identical
  best and worst texts, or from fewer than two parsed verdicts, each counted."""
  from phi4_jax.data.pairs import tokenize_pair
  from phi4_jax.posttrain import stages
  from phi4_jax.tokenizer import Phi4Tokenizer
  replies = {"p0": ["", "Final answer: 7"], "p1": ["Final answer: 7", "Final answer: 7 "],
             "p2": ["same", "same"], "p3": ["garbled", "Final answer: 7"]}
  verdict = lambda a, s, d: f"accuracy: {a}\nstyle: {s}\ndetail: {d}"
  verdicts = {"": verdict(1, 1, 1), "Final answer: 7": verdict(5, 5, 1), "Final answer: 7 ": verdict(5, 5, 1),
              "same": [verdict(5, 5, 5), verdict(1, 1, 1)], "garbled": "no idea"}
  settings = judge.judge_fields()
  settings.num_responses, settings.judge_retries = 2, 1
  prompts = [{"id": p, "question": "What is 3 + 4?", "answer": "7"} for p in replies]
  out = str(tmp_path / "pairs.jsonl")
  summary = judge.run([_Scripted("a", replies)], _Scripted("judge", verdicts=verdicts), prompts, out, settings,
                      progress=None)
  assert summary == {"prompts": 4, "pairs": 1, "accuracy_pairs": 1, "overall_pairs": 0, "dropped_responses": 1,
                     "prompts_without_pair": {"fewer_than_two_scored": 1, "tie": 1, "identical": 1}}
  (pair,) = [json.loads(line) for line in open(out)]
  assert (pair["prompt_id"], pair["chosen"], pair["rejected"]) == ("p0", "Final answer: 7", "")
  prompt, chosen, rejected = tokenize_pair(pair)  # the DPO stage trains on it: the reply <|im_end|>
  assert rejected == [Phi4Tokenizer.im_end_id]
  assert chosen == Phi4Tokenizer().encode_ordinary("Final answer: 7") + [Phi4Tokenizer.im_end_id]
  log = [json.loads(line) for line in open(out + ".log.jsonl")]
  assert [line["no_pair"] for line in log] == [None, "tie", "identical", "fewer_than_two_scored"]
  # the rule-based judge on the same replies: p2's identical texts score alike (a tie), and
  # "garbled" is a response too (no final answer: accuracy 1)
  oracle = judge.run([_Scripted("a", replies)], "oracle", prompts, str(tmp_path / "o.jsonl"), settings,
                     progress=None)
  assert oracle["pairs"] == 2
  assert oracle["prompts_without_pair"] == {"fewer_than_two_scored": 0, "tie": 2, "identical": 0}
  for line in log:  # a log line from before `no_pair` was kept: the reason from its responses
    line.pop("no_pair")
  assert [judge.no_pair_reason(line) for line in log] == [None, "tie", "identical", "fewer_than_two_scored"]
  stage = tmp_path / "stage"
  stage.mkdir()
  (stage / stages.SUMMARY).write_text(json.dumps(summary))
  assert stages.note(str(stage)) == ("1 pairs from 4 prompts (1 by accuracy, 0 overall), 3 prompts without a "
                                     "pair (1 fewer_than_two_scored, 1 tie, 1 identical), 1 responses dropped")

"""Judge-guided pairs: strict verdicts, the pair rules on hand-built score tables, the rule-based
judge, and the OpenAI-compatible client against a fake server on loopback (faults included)."""

import http.server
import json
import os
import threading

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


def test_rule_based_judge():
  record = {"question": "Solve 2x = 14.", "answer": "x = 7"}
  good = judge_rules.oracle_scores(record, "Divide by 2: x = 14 / 2 = 7.\n\nFinal answer: x = 7")
  wrong = judge_rules.oracle_scores(record, "Final answer: x = 8")
  assert good == {"accuracy": 5, "style": 5, "detail": 4} and wrong["accuracy"] == 1  # 3 "= n"
  assert judge_rules.oracle_scores(record, "x = 7\nx = 7")["style"] == 1  # no answer line, repeated
  assert judge_rules.oracle_scores({"question": "Tell me a story."}, "Once.")["accuracy"] == 3


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
  assert summary == {"prompts": 2, "pairs": 1, "accuracy_pairs": 1, "overall_pairs": 0, "dropped_responses": 4}
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

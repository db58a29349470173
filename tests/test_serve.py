"""The OpenAI-compatible server against second code paths: inference.generate alone, our lm-eval
adapter, the `openai` client, lm-eval's `local-completions` model and our own HTTP client."""

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

from phi4_jax import inference, serve
from phi4_jax.inference import batching
from phi4_jax.posttrain.openai_http import Endpoint
from phi4_jax.serve.http import Server
from phi4_jax.serve.metrics import Metrics
from phi4_jax.tokenizer import Phi4Tokenizer

TOK = Phi4Tokenizer()
CACHE_LEN = 128
SMALL_CACHE_LEN = 256  # (one-slot servers: room for 240 new tokens, so a held slot stays held)
NAME = "tiny"


@pytest.fixture(scope="module")
def model(tiny_hf_dir):
  cfg, params = inference.load(tiny_hf_dir)
  return cfg, params


@pytest.fixture(scope="module")
def main_server(model):
  """32 slots: the server most tests share."""
  srv = serve.start(model[1], model[0], model_name=NAME, max_batch=32, max_queue=64, cache_len=CACHE_LEN, chunk=4)
  yield srv
  serve.drain(srv, 5)


@pytest.fixture(scope="module")
def one_slot(model):
  """(no queue, a queue of 4): one-slot servers whose slot a test can hold."""
  servers = [serve.start(model[1], model[0], model_name=NAME, max_batch=1, max_queue=q,
                         cache_len=SMALL_CACHE_LEN, chunk=2) for q in (0, 4)]
  yield servers
  for srv in servers:
    serve.drain(srv, 5)


def client(srv, **kw):
  return openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, **kw)


def alone(model, ids, n, stops=TOK.plain_stops, **kw):
  """inference.generate on the prompt alone, as text without stop tokens, and its token count."""
  out = inference.generate(model[1], model[0], [ids], max_new_tokens=n, stop_ids=stops, **kw)[0]
  return TOK.decode([t for t in out if t not in stops]), len(out)


def post(url, body, headers=None):
  """(status, JSON body, headers) of a POST, error statuses included."""
  req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})
  try:
    with urllib.request.urlopen(req) as r:
      return r.status, json.loads(r.read()), r.headers
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read()), e.headers


def open_stream(srv, max_tokens):
  """(its socket, its response): a streaming chat request whose first event has been read (its
  slot is taken)."""
  host, port = srv.server_address
  conn = http.client.HTTPConnection(host, port)
  conn.connect()
  sock = conn.sock
  body = {"model": NAME, "messages": [{"role": "user", "content": "go"}], "max_tokens": max_tokens,
          "temperature": 0, "stream": True, "ignore_eos": True}
  conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
  response = conn.getresponse()
  assert response.status == 200
  assert response.fp.readline().startswith(b"data: ")
  return sock, response


def hang_up(sock, response):
  sock.shutdown(socket.SHUT_RDWR)
  sock.close()
  response.close()


def metric(srv, name):
  text = urllib.request.urlopen(srv.url[:-3] + "/metrics").read().decode()
  return float(re.search(rf"^phi4_serve_{name} (\S+)$", text, re.M).group(1))


def test_openai_client_completions_chat_and_streams_equal_generate_alone(main_server, model):
  c = client(main_server)
  ids = TOK.encode("The capital of France")
  r = c.completions.create(model=NAME, prompt="The capital of France", max_tokens=10, temperature=0)
  assert (r.choices[0].text, r.usage.completion_tokens) == alone(model, ids, 10)
  assert r.usage.prompt_tokens == len(ids) and r.usage.total_tokens == len(ids) + r.usage.completion_tokens
  streamed = "".join(ch.choices[0].text for ch in c.completions.create(
      model=NAME, prompt="The capital of France", max_tokens=10, temperature=0, stream=True) if ch.choices)
  assert streamed == r.choices[0].text
  messages = [{"role": "user", "content": "What is 7 * 6?"}]
  chat = c.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0)
  chat_ids = TOK.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  assert chat.choices[0].message.content == alone(model, chat_ids, 12, stops=TOK.chat_stops)[0]
  assert chat.usage.prompt_tokens == len(chat_ids)
  chunks = list(c.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0, stream=True))
  assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == chat.choices[0].message.content
  assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
  # stop strings cut the text before them, streamed or not
  stop = chat.choices[0].message.content[5:7]
  cut = c.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0, stop=[stop])
  assert cut.choices[0].message.content == chat.choices[0].message.content.split(stop)[0]
  assert cut.choices[0].finish_reason == "stop"
  assert "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
      model=NAME, messages=messages, max_tokens=12, temperature=0, stop=[stop], stream=True)
      if ch.choices) == cut.choices[0].message.content


def test_32_concurrent_requests_each_equal_generate_alone(main_server, model):
  rng = np.random.default_rng(0)
  jobs = [(rng.integers(0, 100_000, size=int(rng.integers(1, 33))).tolist(), int(rng.integers(3, 17)),
           (i % 4 == 3) and 0.8) for i in range(32)]  # every fourth samples (seed i), the rest greedy
  c = client(main_server)

  def ask(i):
    ids, n, temperature = jobs[i]
    r = c.completions.create(model=NAME, prompt=[ids], max_tokens=n, temperature=temperature or 0, seed=i)
    return r.choices[0].text, r.usage.completion_tokens

  compiled = batching.COMPILES["serve_decode"]
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    got = list(pool.map(ask, range(32)))
  want = [alone(model, ids, n, temperature=t or 0.0, seed=i) for i, (ids, n, t) in enumerate(jobs)]
  assert got == want
  # (start-up compiled the decode of every power of two of slots; a mix of greedy and sampling rows,
  # joining and leaving, compiles no other)
  assert batching.COMPILES["serve_decode"] == compiled


def test_n_seeded_samples_equal_generate_num_samples(main_server, model):
  ids = TOK.encode("Once upon a time")
  kw = dict(temperature=0.9, top_k=40, top_p=0.9)
  r = client(main_server).completions.create(model=NAME, prompt=[ids], max_tokens=8, n=3, seed=11,
                                             extra_body={"top_k": 40}, temperature=0.9, top_p=0.9)
  outs = inference.generate(model[1], model[0], [ids], max_new_tokens=8, num_samples=3, seed=11,
                            stop_ids=TOK.plain_stops, **kw)
  assert [ch.text for ch in r.choices] == [TOK.decode([t for t in o if t not in TOK.plain_stops]) for o in outs]


def test_a_disconnect_frees_the_slot_for_the_next_request(one_slot, model):
  srv = one_slot[1]
  hang_up(*open_stream(srv, max_tokens=200))  # mid-stream: the server's next writes fail: cancelled
  ids = TOK.encode("next")
  r = client(srv).completions.create(model=NAME, prompt=[ids], max_tokens=5, temperature=0)
  assert r.choices[0].text == alone(model, ids, 5)[0]
  assert metric(srv, "requests_cancelled_total") == 1


def test_error_shapes_429_400_401_404(one_slot, main_server):
  full = one_slot[0]
  held = open_stream(full, max_tokens=200)
  status, body, headers = post(full.url + "/completions", {"model": NAME, "prompt": "x", "max_tokens": 2})
  hang_up(*held)
  assert status == 429 and headers["Retry-After"] == "1" and body["error"]["code"] == "rate_limit_exceeded"
  url = main_server.url
  for field, value in (("temperature", -1), ("max_tokens", 10_000), ("n", 0), ("stop", [""]), ("prompt", [])):
    status, body, _ = post(url + "/completions", {"model": NAME, "prompt": "x", "max_tokens": 2, field: value})
    assert (status, body["error"]["param"], body["error"]["type"]) == (400, field, "invalid_request_error"), body
    assert set(body["error"]) == {"message", "type", "param", "code"}
  status, body, _ = post(url + "/chat/completions", {"model": NAME, "messages": [{"role": "user"}]})
  assert (status, body["error"]["param"]) == (400, "messages") and "content" in body["error"]["message"]
  status, body, _ = post(url + "/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
  assert (status, body["error"]["code"]) == (404, "model_not_found")
  keyed = Server(("127.0.0.1", 0), main_server.engine, NAME, Metrics(os.devnull), api_key="sekret")
  threading.Thread(target=keyed.serve_forever, daemon=True).start()
  base = f"http://127.0.0.1:{keyed.server_address[1]}/v1"
  body = {"model": NAME, "prompt": "x", "max_tokens": 2, "temperature": 0}
  assert post(base + "/completions", body)[0] == 401
  assert post(base + "/completions", body, {"Authorization": "Bearer wrong"})[0] == 401
  assert post(base + "/completions", body, {"Authorization": "Bearer sekret"})[0] == 200
  with pytest.raises(openai.AuthenticationError):
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
  keyed.shutdown()
  keyed.server_close()


def test_metrics_parse_as_prometheus_text(main_server):
  steps, rows = metric(main_server, "decode_steps_total"), metric(main_server, "decoded_rows_total")
  client(main_server).completions.create(model=NAME, prompt="Count", max_tokens=6, temperature=0)  # (its own)
  # alone, the request decodes in the first slot only (not all 32)
  assert metric(main_server, "decoded_rows_total") - rows == metric(main_server, "decode_steps_total") - steps > 0
  text = urllib.request.urlopen(main_server.url[:-3] + "/metrics").read().decode()
  sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]+="[^"]*",?)*\})? [-+0-9.eE]+$')
  for line in text.splitlines():
    assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
  assert metric(main_server, "slots_total") == 32
  assert metric(main_server, "queue_depth") == 0 and metric(main_server, "slots_busy") == 0
  assert re.search(r'requests_total\{endpoint="/v1/completions",status="200"\} \d+', text)
  assert metric(main_server, "generated_tokens_total") > 0 and metric(main_server, "prompt_tokens_total") > 0


def test_our_http_client_against_the_server(main_server, model):
  endpoint = Endpoint.parse(f"{main_server.url},model={NAME},api_key_env=")
  messages = [{"role": "user", "content": "Judge this."}]
  ids = TOK.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  assert endpoint.chat(messages, temperature=0.0, max_tokens=9) == alone(model, ids, 9, stops=TOK.chat_stops)[0]


def test_lm_eval_local_completions_equals_our_adapter(main_server, model):
  from lm_eval.api.instance import Instance
  from lm_eval.models.openai_completions import LocalCompletionsAPI

  from phi4_jax.eval.lm_eval import Phi4LM
  from phi4_jax.eval.model import Model
  pairs = [("The capital of France is", " Paris"), ("2 + 2 =", " 4"), ("<|im_start|>user<|im_sep|>hi", " there you")]
  requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
  remote = LocalCompletionsAPI(base_url=main_server.url + "/completions", model=NAME, tokenizer_backend="remote",
                               max_length=CACHE_LEN)
  theirs = remote.loglikelihood(requests, disable_tqdm=True)
  ours = Phi4LM(model=Model(model[1], model[0])).loglikelihood(requests, disable_tqdm=True)
  np.testing.assert_allclose([lp for lp, _ in theirs], [lp for lp, _ in ours], atol=1e-4)
  assert [g for _, g in theirs] == [g for _, g in ours]
  # echo with max_tokens 0: every prompt token's log-prob, the first one null
  ids = TOK.encode("A quick brown fox jumps")
  status, body, _ = post(main_server.url + "/completions", {"model": NAME, "prompt": [ids], "max_tokens": 0,
                                                              "echo": True, "logprobs": 2})
  lps = body["choices"][0]["logprobs"]
  assert status == 200 and lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
  want = inference.logprobs(model[1], model[0], [ids[:1]], [ids[1:]])[0]
  np.testing.assert_allclose(lps["token_logprobs"][1:], want, atol=1e-4)
  assert all(len(top) == 2 for top in lps["top_logprobs"][1:]) and body["usage"]["completion_tokens"] == 0


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_hf_dir):
  proc = subprocess.Popen([sys.executable, "-m", "phi4_jax.serve", f"--hf_dir={tiny_hf_dir}", "--port=0",
                           "--max_batch=1", f"--max_seq_len={SMALL_CACHE_LEN}", "--decode_chunk=2", "--drain_s=60",
                           "--model_name=tiny"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    url = re.search(r"at (http://\S+)", proc.stdout.readline()).group(1)
    srv = type("Srv", (), {"server_address": tuple(url[7:-3].split(":"))})()
    srv.server_address = (srv.server_address[0], int(srv.server_address[1]))
    sock, response = open_stream(srv, max_tokens=100)
    proc.send_signal(signal.SIGTERM)
    while "draining" not in (line := proc.stderr.readline()):
      assert line, "the server exited without draining"
    status, body, _ = post(url + "/completions", {"model": NAME, "prompt": "x", "max_tokens": 2})
    assert (status, body["error"]["code"]) == (503, "draining")
    events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 100
    sock.close()
    assert proc.wait(timeout=120) == 0
  finally:
    if proc.poll() is None:
      proc.kill()

"""Test-wide setup before jax is imported: 8 fake CPU devices (for sharding tests), and one XLA
compilation cache for the session, its subprocesses included (the same train steps are compiled
by many tests and by every stage a subprocess runs); it starts empty and is removed at exit."""

import atexit
import http.server
import json
import os
import shutil
import tempfile
import threading

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="phi4_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> str:
  """A random `test`-preset model (context 256) saved as an HF folder, once per test session: the
  model the generate, data-stage and fingerprint tests sample from."""
  import jax

  from phi4_jax import hf, model
  cfg = model.ModelConfig.preset("test", max_seq_len=256)
  path = str(tmp_path_factory.mktemp("tiny_hf"))
  hf.save(cfg, model.init(cfg, jax.random.key(1)), path)
  return path


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
  """A fresh cache directory holding the embedded data corpus, built once per test session."""
  from phi4_jax.data import corpus
  path = str(tmp_path_factory.mktemp("phi4_jax_cache"))
  corpus.build(path)
  return path


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
  """Replies by the scripted behaviours of the server, one per request, then the default."""

  def do_POST(self):
    server = self.server
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    server.requests.append((body, self.headers.get("Authorization")))
    action = server.script.pop(0) if server.script else server.default
    if action == "500":
      self.send_response(500)
      self.end_headers()
      return
    if action == "hang":  # never answers until the test ends: the client's timeout fires
      server.release.wait()
      return
    if action.startswith(("429 retry-after=", "302 location=")):  # e.g. "429 retry-after=10"
      code, _, value = action.partition(" ")
      header, _, value = value.partition("=")
      self.send_response(int(code))
      self.send_header(header.title(), value)
      self.send_header("Content-Length", "0")
      self.end_headers()
      return
    if action == "drip":  # a whole reply, one byte at a time: each read is quick, the request is not
      text = json.dumps({"choices": [{"message": {"role": "assistant", "content": "slow"}}]}).encode()
      head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(text)}\r\n\r\n".encode()
      for byte in head + text:
        if server.release.wait(0.2):
          return
        try:
          self.wfile.write(bytes([byte]))
          self.wfile.flush()
        except OSError:
          return
      return
    text = b"{not json" if action == "malformed" else json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": server.reply(body)}}]}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(text)))
    self.end_headers()
    self.wfile.write(text)

  def log_message(self, *args):
    pass


@pytest.fixture
def openai_server():
  """A fake OpenAI-compatible chat server on loopback: `script` (per-request faults), `reply`."""
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
  srv.daemon_threads = True
  srv.script, srv.default, srv.requests, srv.release = [], "ok", [], threading.Event()
  srv.reply = lambda body: "hello"
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv
  srv.release.set()
  srv.shutdown()
  srv.server_close()


def pytest_collection_modifyitems(session, config, items):
  """The colab recipe (by far the longest test) first, so that with `-n 2` it overlaps the rest."""
  items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_recipe.py") else 1)


def tiny_phi3(path: str, *, vocab_size: int, hidden_size: int, intermediate_size: int, max_positions: int,
              rope_theta: float, std: float):
  """A tiny random Phi3ForCausalLM (2 layers, 8 heads, GQA 4:1) saved in `path`: every weight
  random, norms too (around 1), so no swapped tensor goes unnoticed. Returns the net."""
  import torch  # (imported here: only the tests that use the model pay for torch)
  import transformers
  torch.manual_seed(0)
  config = transformers.Phi3Config(
      vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
      max_position_embeddings=max_positions,
      rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, pad_token_id=None,
      bos_token_id=None, eos_token_id=None)
  net = transformers.Phi3ForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else std * torch.randn_like(p))
  net.save_pretrained(path)
  return net


@pytest.fixture(scope="session")
def make_tiny_phi3():
  """tiny_phi3, for tests that need a Hugging Face reference model of their own shape."""
  return tiny_phi3


# The tiny random Phi3ForCausalLM of test_hf.py and test_hf_refusals.py.
@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  """(path, net): a tiny random Phi3ForCausalLM (GQA 4:1, head_dim 16, theta 250k) in a folder."""
  path = str(tmp_path_factory.mktemp("hf_tiny"))
  net = tiny_phi3(path, vocab_size=1000, hidden_size=128, intermediate_size=224, max_positions=64,
                  rope_theta=250_000.0, std=0.08)
  return path, net


@pytest.fixture(scope="module")
def loaded(hf_model):
  """(cfg, params) of hf_model, through hf.load."""
  from phi4_jax import hf
  return hf.load(hf_model[0])

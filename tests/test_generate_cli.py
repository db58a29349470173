"""`python -m phi4_jax.generate`: a streamed prompt, a chat prompt, a resumable prompts file."""

import json

import pytest

from phi4_jax import generate, inference
from phi4_jax.tokenizer import Phi4Tokenizer

TOK = Phi4Tokenizer()


def test_prompt_streams_the_greedy_continuation(tiny_hf_dir, capsys):
  generate.main([f"--hf_dir={tiny_hf_dir}", "--prompt=def fib(n):", "--max_new_tokens=12"])
  printed = capsys.readouterr().out
  cfg, params = inference.load(tiny_hf_dir)
  ids = [TOK.bos_id, *TOK.encode_ordinary("def fib(n):")]
  (expected,) = inference.generate(params, cfg, [ids], max_new_tokens=12, stop_ids=generate.PLAIN_STOPS)
  assert printed == TOK.decode(expected) + "\n"


def test_chat_wraps_the_prompt_in_the_template(tiny_hf_dir):
  ids = generate.prompt_ids({"prompt": "hi"}, chat=True, where="--prompt")
  assert TOK.decode(ids) == "<|im_start|>user<|im_sep|>hi<|im_end|><|im_start|>assistant<|im_sep|>"
  assert generate.prompt_ids({"prompt_ids": [1, 2]}, chat=True, where="x") == [1, 2]
  with pytest.raises(ValueError, match="F.jsonl:3: expected a 'prompt' string"):
    generate.prompt_ids({"text": "no"}, chat=False, where="F.jsonl:3")


def test_prompts_file_is_resumable_after_a_cut_line(tiny_hf_dir, tmp_path):
  prompts = tmp_path / "p.jsonl"
  prompts.write_text("\n".join(json.dumps(r) for r in [
      {"prompt": "one"}, {"messages": [{"role": "user", "content": "two"}]}, {"prompt_ids": [5, 6, 7]}]))
  out = tmp_path / "o.jsonl"
  argv = [f"--hf_dir={tiny_hf_dir}", f"--prompts_file={prompts}", f"--output={out}", "--max_new_tokens=6",
          "--num_samples=2", "--temperature=1.0", "--batch_prompts=2"]
  generate.main(argv)
  full = out.read_text().splitlines()
  assert sorted(json.loads(line)["index"] for line in full) == [0, 1, 2]
  assert all(len(json.loads(line)["completion_ids"]) == 2 for line in full)
  out.write_text(full[0] + "\n" + full[1][:10])  # killed while writing the second line
  generate.main(argv)
  again = out.read_text().splitlines()
  assert sorted(again, key=lambda l: json.loads(l)["index"]) == sorted(full, key=lambda l: json.loads(l)["index"])


def test_bad_prompts_file_names_file_and_line(tiny_hf_dir, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "ok"}\n{not json\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
    generate.main([f"--hf_dir={tiny_hf_dir}", f"--prompts_file={bad}", f"--output={tmp_path / 'o'}"])

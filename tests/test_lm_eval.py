"""The lm-evaluation-harness adapter against lm-eval's own `hf` model on the same checkpoint
(exported with hf.save, tokenizer files included), on tasks defined from local files."""

import json
import os

import jax
import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from phi4_jax import hf  # noqa: E402
from phi4_jax import model as model_lib  # noqa: E402
from phi4_jax.eval import Model  # noqa: E402
from phi4_jax.eval import lm_eval as adapter  # noqa: E402
from phi4_jax.eval.model import TOKENIZER  # noqa: E402

TASKS = {
    "local_mc": """output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm""",
    "local_rolling": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte""",
    "local_gen": """output_type: generate_until
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{choices[answer]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match""",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("lm_eval")
  items = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b)],
            "answer": i % 3, "text": f"{a} plus {b} is {a + b}. " * (1 + 40 * (i == 0))}
           for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 6), (7, 8), (10, 20)])]
  (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
  for name, body in TASKS.items():
    (root / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root}/items.jsonl\n"
        f"test_split: test\n{body}\n")
  cfg = model_lib.ModelConfig.preset("test", max_seq_len=128)  # (the rolling document needs 3 windows)
  params = model_lib.init(cfg, jax.random.PRNGKey(1))
  hf.save(cfg, params, str(root / "hf"))
  return root, Model(params, cfg)


def run(lm, root):
  return lm_eval.simple_evaluate(model=lm, tasks=list(TASKS), task_manager=TaskManager(include_path=str(root)),
                                 log_samples=True, verbosity="ERROR")


def test_adapter_equals_lm_evals_hf_model_on_the_exported_checkpoint(setup):
  root, model = setup
  ours = run(adapter.Phi4LM(model=model), root)
  theirs = run(HFLM(pretrained=str(root / "hf"), dtype="float32", device="cpu", batch_size=4,
                     max_length=127), root)
  for task in TASKS:
    for a, b in zip(ours["samples"][task], theirs["samples"][task], strict=True):
      assert a["doc_id"] == b["doc_id"]
      if task == "local_gen":
        assert a["resps"] == b["resps"]
      elif task == "local_rolling":
        np.testing.assert_allclose(a["resps"][0][0], b["resps"][0][0], rtol=1e-5, atol=1e-4)
      else:
        for (lp_a, greedy_a), (lp_b, greedy_b) in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]]):
          assert abs(lp_a - lp_b) < 1e-4 and greedy_a == greedy_b
    for metric, value in theirs["results"][task].items():
      if metric.split(",")[0] in ("acc", "acc_norm", "exact_match"):
        assert ours["results"][task][metric] == value, (task, metric)
      elif metric.split(",")[0] in ("word_perplexity", "bits_per_byte"):
        assert ours["results"][task][metric] == pytest.approx(value, rel=1e-5)


def test_is_greedy_flags_the_models_own_greedy_continuation(setup):
  _, model = setup
  lm = adapter.Phi4LM(model=model)
  prompt = TOKENIZER.encode_ordinary("The cat sat on the")
  greedy = model.generate([prompt], max_new_tokens=4)[0]
  ids = TOKENIZER.encode_ordinary(greedy)[:3] if greedy else []
  if not ids:
    pytest.skip("the random model's greedy continuation is a stop token")
  other = [(ids[0] + 1) % 1000] + ids[1:]
  (lp, is_greedy), (lp2, not_greedy) = lm._loglikelihood_tokens([(None, prompt, ids), (None, prompt, other)])
  assert is_greedy and not not_greedy and lp > lp2


def test_model_args_name_one_checkpoint():
  with pytest.raises(ValueError, match="exactly one of workdir=, hf_dir= or pretrained="):
    adapter.Phi4LM(workdir="a", hf_dir="b")


def test_exported_tokenizer_is_ours(setup):
  import transformers
  root, _ = setup
  tok = transformers.AutoTokenizer.from_pretrained(str(root / "hf"))
  texts = ["hello world  x<|im_start|>", "def f(x):\n\treturn x**2  # ünïcödé 日本語 🎉\n\n\n",
           open(adapter.__file__, encoding="utf-8").read()]
  for text in texts:
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == TOKENIZER.encode(text, allowed_special="all") and tok.decode(ids) == text
  messages = [{"role": "user", "content": "hi"}]
  assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
      TOKENIZER.apply_chat_template(messages, add_generation_prompt=True)
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (TOKENIZER.bos_id, TOKENIZER.eos_id, TOKENIZER.pad_id)

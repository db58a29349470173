"""SFT and DPO as stages of the one loop: the masked loss by hand, exact resume, and the checks."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi4_jax import configs, model
from phi4_jax.data import chat
from phi4_jax.train import loop, step
from phi4_jax.train.config import validate
from phi4_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"log_every": 1, "tensorboard": False, "async_checkpointing": False, "checkpoint_every": 2,
        "mesh_shape": (1, 4, 2)}


def _config(stage, **overrides):
  return configs.load(os.path.join(ROOT, f"experiments/{stage}.py:test"), {**FAST, **overrides})


def test_sft_loss_is_the_mean_over_assistant_tokens_only():
  cfg = model.ModelConfig.preset("test", max_seq_len=64)
  params = model.init(cfg, jax.random.key(0))
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
              {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
              {"role": "assistant", "content": "6, since 3+3=6."}]
  ids, mask = chat.tokenize_conversation(messages)
  n = len(ids)
  batch = {"tokens": jnp.asarray(ids)[None], "segment_ids": jnp.ones((1, n), jnp.int32),
           "positions": jnp.arange(n)[None], "loss_mask": jnp.asarray(mask)[None],
           "source_ids": jnp.zeros((1, n), jnp.int32)}
  total, sums = step.lm_loss_sums(params, batch, cfg=cfg, num_sources=1, loss_chunk=0)
  logits = np.asarray(model.forward(params, batch["tokens"], cfg), np.float64)[0]
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  targets = [t for t in range(1, n) if mask[t]]  # the assistant tokens and their <|im_end|>
  hand = -sum(logp[t - 1, ids[t]] for t in targets)
  assert float(sums["denominator"]) == len(targets) == int(mask.sum())
  np.testing.assert_allclose(float(total), hand, rtol=1e-5)


def _resumes_exactly(stage, workdir, steps=4, **overrides):
  """Trains `steps` straight; then a copy of that workdir loses everything after the step-2
  checkpoint (what a kill -9 loses; its metrics keep the later rows) and resumes: both log the
  same losses."""
  straight, killed = f"{workdir}_straight", f"{workdir}_killed"
  loop.train(_config(stage, steps=steps, **overrides), straight)
  shutil.copytree(straight, killed)
  for later in range(3, steps + 1):
    shutil.rmtree(os.path.join(killed, "checkpoints", str(later)), ignore_errors=True)
  summary = loop.train(_config(stage, steps=steps, **overrides), killed)
  assert summary["start_step"] == 2
  rows = lambda w: {r["step"]: r for r in read_metrics(w)}
  assert [rows(killed)[s]["loss"] for s in range(1, steps + 1)] == \
      [rows(straight)[s]["loss"] for s in range(1, steps + 1)]
  return straight, rows(straight)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  return _resumes_exactly("sft", str(tmp_path_factory.mktemp("sft") / "w"))


def test_sft_resumes_exactly_and_logs_its_masked_token_count(sft_run):
  _, rows = sft_run
  assert all(r["target_tokens_per_step"] > 0 for r in rows.values())
  assert rows[4]["loss"] < rows[1]["loss"]


def test_dpo_starts_at_ln2_resumes_exactly_and_logs_rewards(sft_run, tmp_path):
  sft_dir, _ = sft_run
  _, rows = _resumes_exactly("dpo", str(tmp_path / "w"), init_from=sft_dir)
  first = rows[1]
  np.testing.assert_allclose(first["loss"], np.log(2.0), atol=1e-5)  # policy == reference
  assert first["reward_accuracy"] == 0.0 and abs(first["reward_margin"]) < 1e-5
  assert first["pairs_per_step"] > 0 and set(first["loss_per_source"]) == {"math"}
  assert rows[4]["loss"] < first["loss"]
  assert json.loads(open(os.path.join(tmp_path / "w_straight", "config.json")).read())["objective"] == "dpo"
  # The issue-25 collapse (DPO learning "answer nothing"): on the held-out parity questions, the
  # DPO model's p(<|im_end|> as the first token) does not rise and its greedy accuracy does not fall.
  first_eos, accuracy = (_eos_and_accuracy(w) for w in (sft_dir, str(tmp_path / "w_straight")))
  assert first_eos[1] <= first_eos[0] * 1.5 + 1e-3 and accuracy[1] >= accuracy[0] - 1 / 32, (first_eos, accuracy)


def _eos_and_accuracy(workdir, n=32):
  """(mean p(<|im_end|> first), greedy accuracy) of a chat model on n held-out parity questions."""
  from phi4_jax import inference
  from phi4_jax.data import families
  from phi4_jax.eval.model import chat_prompt
  from phi4_jax.posttrain import oracles
  from phi4_jax.store import workdir as workdir_lib
  from phi4_jax.tokenizer import Phi4Tokenizer
  tok = Phi4Tokenizer()
  cfg, params = workdir_lib.restore_params(workdir)
  items = families.items("parity", "eval", n)
  prompts = [chat_prompt(it["question"]) for it in items]
  eos = np.exp([float(lp[0]) for lp in inference.logprobs(params, cfg, prompts, [[tok.im_end_id]] * n)])
  outs = inference.generate(params, cfg, prompts, max_new_tokens=6, stop_ids=(tok.im_end_id,))
  right = [oracles.check_final_answer(it["answer"], tok.decode([t for t in out if t != tok.im_end_id]))
           for it, out in zip(items, outs)]
  return float(eos.mean()), sum(right) / n


def test_a_dpo_stage_without_init_from_fails_naming_the_field(tmp_path):
  with pytest.raises(ValueError, match="config.init_from: is empty, but a DPO stage needs one"):
    loop.train(_config("dpo", steps=1), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  config = _config("dpo", steps=1, init_from=str(tmp_path))
  config.dpo.beta = 0.0
  with pytest.raises(ValueError, match=r"config.dpo.beta: must be > 0"):
    validate(config, 8, check_init_from=False)


def test_precomputed_reference_gives_the_same_losses_and_its_pass_resumes(sft_run, tmp_path, monkeypatch):
  from phi4_jax.posttrain import reference
  sft_dir, _ = sft_run
  on_the_fly = str(tmp_path / "fly")
  loop.train(_config("dpo", steps=3, init_from=sft_dir), on_the_fly)
  monkeypatch.setattr(reference, "CHUNK_BATCHES", 1)
  real_chunk, calls = reference._chunk, []

  def crash_on_the_second(*args):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt("killed during the reference pass")
    return real_chunk(*args)

  monkeypatch.setattr(reference, "_chunk", crash_on_the_second)
  precomputed = str(tmp_path / "pre")
  overrides = {"steps": 3, "init_from": sft_dir, "dpo.precompute_reference": True}
  with pytest.raises(KeyboardInterrupt):
    loop.train(_config("dpo", **overrides), precomputed)
  assert os.listdir(os.path.join(precomputed, "reference_logprobs")) == ["process_0.chunk_0.npz"]
  loop.train(_config("dpo", **overrides), precomputed)  # scores batches 2 and 3 only
  assert len(calls) == 4
  table = np.load(os.path.join(precomputed, "reference_logprobs", "process_0.npz"))
  rows = lambda w: read_metrics(w)
  assert len(table["ids"]) == sum(r["pairs_per_step"] for r in rows(precomputed))
  np.testing.assert_allclose([r["loss"] for r in rows(precomputed)], [r["loss"] for r in rows(on_the_fly)],
                             rtol=1e-5)

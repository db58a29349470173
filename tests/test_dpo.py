"""DPO: the loss against a numpy transcription of its formulas, packed rows against one pair per
row, and sequence log-prob sums against transformers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from phi4_jax import hf, model
from phi4_jax.posttrain import dpo


def _logsigmoid(x):
  return -np.logaddexp(0.0, -x)


def _numpy_dpo(pc, pr, rc, rr, beta, e, loss_type):
  d = (pc - rc) - (pr - rr)
  if loss_type == "ipo":
    return (d - 1 / (2 * beta)) ** 2
  return -(1 - e) * _logsigmoid(beta * d) - e * _logsigmoid(-beta * d)


@pytest.mark.parametrize("loss_type,beta,e", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2),
                                             ("ipo", 0.1, 0.0), ("ipo", 2.0, 0.0)])
def test_dpo_loss_equals_the_formulas(loss_type, beta, e):
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = (rng.normal(-30, 8, 64) for _ in range(4))
  loss, m = dpo.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), beta=beta,
                         label_smoothing=e, loss_type=loss_type)
  np.testing.assert_allclose(loss, _numpy_dpo(pc, pr, rc, rr, beta, e, loss_type), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(m["chosen_reward"], beta * (pc - rc), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m["reward_margin"], beta * ((pc - rc) - (pr - rr)), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(m["reward_accuracy"], (pc - rc > pr - rr).astype(np.float32))


def test_policy_equal_to_reference_gives_ln2_and_zero_rewards():
  x = jnp.asarray([-12.0, -3.5])
  loss, m = dpo.dpo_loss(x, x + 1, x, x + 1, beta=0.1)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  assert float(m["reward_accuracy"].sum()) == 0.0 and float(jnp.abs(m["reward_margin"]).sum()) == 0.0


def test_the_nll_term_adds_the_chosen_mean_token_nll_and_the_log_ratios_are_logged():
  rng = np.random.default_rng(1)
  pc, pr, rc, rr = (rng.normal(-30, 8, 16) for _ in range(4))
  lengths = rng.integers(1, 40, 16).astype(np.float32)
  args = [jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)]
  loss, m = dpo.dpo_loss(*args, beta=0.2, nll_weight=0.5, chosen_tokens=jnp.asarray(lengths))
  np.testing.assert_allclose(loss, _numpy_dpo(pc, pr, rc, rr, 0.2, 0.0, "sigmoid") + 0.5 * (-pc / lengths),
                             rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(m["chosen_nll"], -pc / lengths, rtol=1e-6)
  np.testing.assert_allclose(m["chosen_logratio"], pc - rc, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m["rejected_logratio"], pr - rr, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="chosen_tokens"):
    dpo.dpo_loss(*args, beta=0.2, nll_weight=0.5)


CFG = model.ModelConfig.preset("test", vocab_size=128, max_seq_len=64)
PAIRS = [([5, 6, 7], [8, 9], [10]), ([11, 12], [13, 14, 15], [16, 17]), ([20], [21], [22, 23, 24])]


def _rows(pairs, row_len, pairs_per_row, grouping):
  """The DPO row layout by hand: pair j of a row is segments 2j+1 (chosen) and 2j+2 (rejected)."""
  n = len(grouping)
  out = {k: np.zeros((n, row_len), np.int32) for k in ("tokens", "segment_ids", "positions", "loss_mask")}
  out["pair_source_ids"] = np.full((n, pairs_per_row), -1, np.int32)
  for r, members in enumerate(grouping):
    offset = 0
    for j, i in enumerate(members):
      prompt, chosen, rejected = pairs[i]
      for k, completion in enumerate((chosen, rejected)):
        seq = prompt + completion
        span = slice(offset, offset + len(seq))
        out["tokens"][r, span] = seq
        out["segment_ids"][r, span] = 2 * j + 1 + k
        out["positions"][r, span] = np.arange(len(seq))
        out["loss_mask"][r, offset + len(prompt):offset + len(seq)] = 1
        offset += len(seq)
      out["pair_source_ids"][r, j] = i % 2
  return {k: jnp.asarray(v) for k, v in out.items()}


def test_packed_rows_give_the_loss_and_gradients_of_one_pair_per_row():
  policy = model.init(CFG, jax.random.key(0))
  reference = model.init(CFG, jax.random.key(1))
  loss = functools.partial(dpo.dpo_loss_sums, cfg=CFG, beta=0.3, label_smoothing=0.1, loss_type="sigmoid",
                           num_sources=2, chunk=8)
  mean = lambda p, batch: (lambda total, s: total / s["denominator"])(*loss(p, batch, {"reference": reference}))
  packed = _rows(PAIRS, 32, 3, [[0, 1], [2]])
  padded = _rows(PAIRS, 16, 1, [[0], [1], [2]])
  (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(mean))(policy, b) for b in (packed, padded))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)
  _, sums = loss(policy, packed, {"reference": reference})
  assert float(sums["denominator"]) == 3 and np.asarray(sums["source_pairs"]).tolist() == [2, 1]
  # the NLL term's lengths are each chosen completion's tokens, counted by hand from PAIRS
  np.testing.assert_array_equal(dpo.chosen_lengths(packed, 3), [[2, 3, 0], [1, 0, 0]])


def test_sequence_logprob_sums_equal_transformers_on_the_exported_model(tmp_path):
  params = model.init(CFG, jax.random.key(3))
  hf.save(CFG, params, str(tmp_path))
  net = transformers.Phi3ForCausalLM.from_pretrained(str(tmp_path)).eval()
  batch = _rows(PAIRS, 32, 3, [[0, 1], [2]])
  chosen, rejected = dpo.sequence_logprobs(params, batch, CFG, 3, chunk=8)
  for r, members in enumerate([[0, 1], [2]]):
    for j, i in enumerate(members):
      prompt, *completions = PAIRS[i]
      for got, completion in zip((chosen[r, j], rejected[r, j]), completions):
        with torch.no_grad():
          logits = net(torch.tensor([prompt + completion])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        expected = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(completion))
        np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-4)

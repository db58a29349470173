"""An lm-evaluation-harness model: `phi4_jax`, any stage's checkpoint or a Hugging Face folder.

  python -m phi4_jax.eval.lm_eval --model phi4_jax --model_args workdir=W[,step=N] --tasks T ...
  python -m phi4_jax.eval.lm_eval --model phi4_jax --model_args hf_dir=DIR --tasks T --apply_chat_template

The command is lm_eval's own (every flag of `lm_eval` works) with this model registered first
(lm_eval finds no models outside its package); in Python, importing this module registers it:
`lm_eval.simple_evaluate(model="phi4_jax", model_args="workdir=W", tasks=[...])`.

  loglikelihood          batched teacher-forced scoring (inference.logprobs: several requests
                         packed per row with segment ids), the sum and whether every
                         continuation token was the model's most likely one; contexts are cut on
                         the left to max_length as the harness's hf model cuts them
  loglikelihood_rolling  the harness's disjoint rolling windows of max_length, summed
  generate_until         our KV-cache sampler, grouped by generation settings; `until` strings cut
                         the text, `max_gen_toks` is the token budget, temperature 0 (or
                         do_sample false) is greedy
  chat template          ChatML, the template SFT trains on (--apply_chat_template)

Model arguments: workdir or hf_dir (or pretrained: either), step, max_length (default the
model's max_seq_len - 1: the harness scores max_length tokens after one of context, and our scorer
feeds every scored token), max_gen_toks (default 256), seed.
"""

from __future__ import annotations

import collections
import sys

import lm_eval.api.model
import lm_eval.api.registry
from lm_eval import utils as lm_utils

from phi4_jax.eval.model import TOKENIZER, Model

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_sep|>{{ m['content'] }}<|im_end|>"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}")


@lm_eval.api.registry.register_model("phi4_jax")
class Phi4LM(lm_eval.api.model.TemplateLM):
  """lm_eval's LM interface over phi4_jax's sampler and scorer."""

  def __init__(self, workdir: str | None = None, hf_dir: str | None = None, pretrained: str | None = None,
               step: int | None = None, max_length: int | None = None, max_gen_toks: int = 256,
               seed: int = 0, model: Model | None = None, **_harness_args):
    super().__init__()  # (_harness_args: batch_size, device, ... which the packing makes moot)
    if model is None:
      path = [p for p in (workdir, hf_dir, pretrained) if p]
      if len(path) != 1:
        raise ValueError("phi4_jax model_args: give exactly one of workdir=, hf_dir= or pretrained=")
      if step not in (None, "") and not str(step).isdigit():
        raise ValueError(f"phi4_jax model_args: step={step!r} is not a checkpoint step (an integer >= 0)")
      from phi4_jax import inference
      cfg, params = inference.load(path[0], None if step in (None, "") else int(step))
      model = Model(params, cfg)
    self.model = model
    self._max_length = int(max_length or model.cfg.max_seq_len - 1)  # (+1: the last target is no input)
    self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)

  # -- tokenizer ---------------------------------------------------------------------------
  @property
  def eot_token_id(self) -> int:
    return TOKENIZER.im_end_id

  @property
  def prefix_token_id(self) -> int:
    return TOKENIZER.bos_id  # <|endoftext|>: what a packed pretraining document follows

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return "phi4_jax-cl100k"

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    return TOKENIZER.encode(string, allowed_special="all")  # (templated text holds special tokens)

  def tok_decode(self, ids) -> str:
    return TOKENIZER.decode(list(ids))

  def chat_template(self, chat_template: bool | str = False) -> str:
    return CHATML

  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return TOKENIZER.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

  # -- scoring -----------------------------------------------------------------------------
  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
    prompts, conts = [], []
    for _, context_enc, continuation_enc in requests:
      if not continuation_enc:  # (its log-likelihood is not 0 and "greedy": the request is malformed)
        raise ValueError(f"lm-eval asked for the log-likelihood of an empty continuation after "
                         f"{len(context_enc)} context tokens; check the task's target")
      whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
      cont = list(continuation_enc)[-self.max_length:]
      prompts.append(whole[:len(whole) - len(cont)])
      conts.append(cont)
    scored = self.model.score(prompts, conts, with_greedy=True)
    results = [(float(lp.sum()), bool(greedy.all())) for lp, greedy in scored]
    for (key, _, _), result in zip(requests, results):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owner = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for context, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)):
        windows.append((None, context, cont))
        owner.append(i)
    totals = [0.0] * len(requests)
    for i, (lp, _) in zip(owner, self._loglikelihood_tokens(windows)):
      totals[i] += lp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  # -- generation --------------------------------------------------------------------------
  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    groups = collections.defaultdict(list)
    for i, req in enumerate(requests):
      context, gen_kwargs = req.args
      kwargs = dict(gen_kwargs or {})
      until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
      until = (until,) if isinstance(until, str) else tuple(until)
      budget = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
      sample = kwargs.pop("do_sample", None)
      temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
      if sample is False:
        temperature = 0.0
      groups[(until, budget, temperature)].append(i)
    out: list[str] = [""] * len(requests)
    for (until, budget, temperature), members in groups.items():
      prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - budget):] for i in members]
      texts = self.model.generate(prompts, max_new_tokens=budget, until=until, temperature=temperature,
                                  seed=self.seed, what="request")
      for i, text in zip(members, texts):
        out[i] = text
        self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return out


def main() -> None:
  """lm_eval's command line, with `phi4_jax` registered."""
  from lm_eval.__main__ import cli_evaluate
  sys.argv[0] = "python -m phi4_jax.eval.lm_eval"
  cli_evaluate()


if __name__ == "__main__":
  main()

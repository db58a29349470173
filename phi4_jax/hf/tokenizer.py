"""The tokenizer files of an exported folder (tokenizer.json, tokenizer_config.json), so that
transformers, lm-evaluation-harness's `hf` model or vLLM load the same tokenizer as ours.

tokenizer.json is the `tokenizers` library's byte-level BPE over cl100k_base's ranks: the vocab in
GPT-2's byte-to-unicode alphabet, the merges recovered from the ranks (every split of a token into
two tokens whose concatenation ranks, ordered by the merged token's rank), cl100k's split pattern
in the syntax of the `tokenizers` library's regex engine (HF_SPLIT_PATTERN), and Phi-4's special
tokens as added tokens. Written with the standard library only.
"""

from __future__ import annotations

import functools
import json
import os

from phi4_jax.tokenizer import CL100K_PAT_STR, ENDOFTEXT, IM_END, PAD, SPECIAL_TOKENS, _cl100k_path, _load_ranks

# cl100k's pattern for Oniguruma, which `tokenizers` runs: there `\p{N}{1,3}+` is a repeated group
# (any run of digits in one piece: "4817" split 48|17), where tiktoken reads a possessive {1,3}
# (481|7). Nothing follows it in its alternative, so the plain greedy {1,3} matches the same.
HF_SPLIT_PATTERN = CL100K_PAT_STR.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + "
          "message['content'] + '<|im_end|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}")


@functools.cache
def _byte_alphabet() -> dict[int, str]:
  """GPT-2's reversible byte -> printable unicode character map."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def _text(token: bytes) -> str:
  alphabet = _byte_alphabet()
  return "".join(alphabet[b] for b in token)


def tokenizer_json() -> dict:
  """tokenizer.json's content."""
  ranks = _load_ranks(_cl100k_path())
  merges = []
  for token, rank in ranks.items():
    for i in range(1, len(token)):
      left, right = token[:i], token[i:]
      if left in ranks and right in ranks:
        merges.append((rank, ranks[left], ranks[right], left, right))
  merges.sort()
  return {
      "version": "1.0", "truncation": None, "padding": None,
      "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": True} for name, i in SPECIAL_TOKENS.items()],
      "normalizer": None,
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          {"type": "Split", "pattern": {"Regex": HF_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
          {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
      "post_processor": None,
      "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
      "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                "vocab": {_text(token): rank for token, rank in ranks.items()},
                "merges": [[_text(left), _text(right)] for *_, left, right in merges]},
  }


def write_tokenizer(out_dir: str, max_seq_len: int) -> None:
  """tokenizer.json, tokenizer_config.json (ChatML chat template, Phi-4's bos/eos/pad) and
  generation_config.json (the ids generation stops at and pads with: `<|im_end|>` ends a chat turn,
  `<|endoftext|>` a document, as our sampler stops)."""
  generation = {"bos_token_id": SPECIAL_TOKENS[ENDOFTEXT],
                "eos_token_id": [SPECIAL_TOKENS[IM_END], SPECIAL_TOKENS[ENDOFTEXT]],
                "pad_token_id": SPECIAL_TOKENS[PAD], "do_sample": False}
  with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump(generation, f, indent=2)
  with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(tokenizer_json(), f, ensure_ascii=False)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": ENDOFTEXT, "eos_token": IM_END,
            "pad_token": PAD, "unk_token": None, "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "model_max_length": max_seq_len, "chat_template": CHATML}
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)

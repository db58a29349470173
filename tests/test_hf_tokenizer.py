"""The exported tokenizer.json, as the `tokenizers` library (transformers, lm-eval's `hf` model,
vLLM) runs it, gives the ids training gave, on numbers of every length, every Unicode category,
code and whitespace runs (issue #24, item 9: "4817" was 48|17 there and 481|7 here)."""

import json
import random
import sys
import unicodedata

import pytest

tokenizers = pytest.importorskip("tokenizers")

from phi4_jax.hf.tokenizer import tokenizer_json  # noqa: E402
from phi4_jax.tokenizer import Phi4Tokenizer  # noqa: E402


def _numbers() -> list[str]:
  rng = random.Random(0)
  texts = [str(rng.randrange(10 ** (n - 1), 10 ** n)) for n in range(1, 25) for _ in range(3)]
  texts += ["0", "00", "007", "2024", "4817", "65252", "3.14159", "-1,234,567.89", "1e-10", "x1234y",
            "12 345 6789", "٣٤٥٦٧", "１２３４５", "Ⅻ", "½⅔", "²³⁴⁵", "v1.22.333.4444"]
  return texts


def _unicode_categories() -> list[str]:
  """Three characters of every general category (first, middle, last in the BMP and beyond)."""
  by_category: dict[str, list[str]] = {}
  for code in range(0x30000):
    if 0xD800 <= code <= 0xDFFF:
      continue  # (surrogates are not text)
    by_category.setdefault(unicodedata.category(chr(code)), []).append(chr(code))
  texts = []
  for chars in by_category.values():
    picked = "".join((chars[0], chars[len(chars) // 2], chars[-1]))
    texts += [picked, f"a{picked}b 12{picked}34", f" {picked}\n"]
  return texts


CODE = [
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < 10000; ++i) { a[i] = b[i] * 31337; }",
    "SELECT id, COUNT(*) FROM t WHERE x >= 12345 GROUP BY id;",
    "    \n\n\t\t  \r\n   x  \n", "   ", "\n\n\n", "a  b   c    d", "trailing   ", "\r\r\n\n",
    "I'm, you're, she'S, THEY'LL, we've, it'd, don'T", "naïve café — “quotes” …", "🙂👍🏽🇫🇷 emoji",
    "<|im_start|>user<|im_sep|>not special here<|im_end|>", "e\u0301 combining", "\u200b\u200d zero width",
]


def test_exported_tokenizer_matches_training_on_a_broad_corpus():
  hf = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json()))
  ours = Phi4Tokenizer()
  corpus = [*_numbers(), *_unicode_categories(), *CODE]
  corpus.append(" ".join(corpus))  # (and everything at once, as one document)
  # (special-token text is a special token to `tokenizers`, as a rendered chat template needs)
  differ = [(text, hf.encode(text, add_special_tokens=False).ids, ours.encode(text, "all"))
            for text in corpus if hf.encode(text, add_special_tokens=False).ids != ours.encode(text, "all")]
  assert not differ, differ[:5]
  assert ours.encode("4817") == [21235, 22]  # 481|7, training's split


def test_the_exported_generation_config_stops_where_our_sampler_stops(tmp_path):
  transformers = pytest.importorskip("transformers")
  from phi4_jax.hf.tokenizer import write_tokenizer
  write_tokenizer(str(tmp_path), 1024)
  generation = transformers.GenerationConfig.from_pretrained(str(tmp_path))
  tok = Phi4Tokenizer()
  assert set(generation.eos_token_id) == set(tok.plain_stops) and tok.chat_stops[0] in generation.eos_token_id
  assert generation.pad_token_id == tok.pad_id and generation.do_sample is False

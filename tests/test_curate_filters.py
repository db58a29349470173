"""Heuristic filters: for every rule a hand-built document just inside its threshold (the rule passes)
and one just outside (verdict names that rule), the values computed by hand; the language rule on
English, French and German; the dup n-gram walk against a plain one; datatrove's verdicts when it is
installed."""

import math
import random
import zlib

import pytest

from phi4_jax.curate import filters

ENGLISH = ("The river runs through the old town and past the market, where farmers sell bread, cheese and "
           "fresh vegetables every Saturday morning. Children play near the stone bridge while their "
           "parents talk with friends. In the evening the square fills with music, and small lamps light "
           "the narrow streets. Visitors often say that the town feels calm and friendly, and many of them "
           "return the following summer to walk along the water again.")
FRENCH = ("La rivière traverse la vieille ville et passe devant le marché, où les paysans vendent du pain, "
          "du fromage et des légumes frais chaque samedi matin. Les enfants jouent près du pont de pierre "
          "pendant que leurs parents discutent avec des amis. Le soir, la place se remplit de musique et "
          "de petites lampes éclairent les rues étroites. Les visiteurs disent souvent que la ville est "
          "calme et accueillante, et beaucoup reviennent l'été suivant pour marcher de nouveau au bord de "
          "l'eau.")
GERMAN = ("Der Fluss fließt durch die alte Stadt und am Markt vorbei, wo die Bauern jeden Samstagmorgen "
          "Brot, Käse und frisches Gemüse verkaufen. Kinder spielen an der steinernen Brücke, während ihre "
          "Eltern mit Freunden sprechen. Am Abend füllt sich der Platz mit Musik, und kleine Lampen "
          "erleuchten die engen Gassen. Besucher sagen oft, dass sich die Stadt ruhig und freundlich "
          "anfühlt, und viele kommen im nächsten Sommer wieder, um erneut am Wasser entlang zu gehen.")


def settings(**overrides):
  """The defaults with the language rule off (its own test turns it on) and `overrides`."""
  return filters.FIELDS.config(**{"languages": "", **overrides})


def word(i: int, length: int = 5) -> str:
  """A distinct lowercase non-word for each i < 676 ('q', two letters, then 'u's): never a stop word."""
  return ("q" + chr(97 + i // 26) + chr(97 + i % 26) + "u" * length)[:length]


def words(n: int, length: int = 5, start: int = 0) -> list[str]:
  """n distinct words: the two stop words 'the' and 'and', then n - 2 non-words."""
  return ["the", "and"] + [word(start + i, length) for i in range(n - 2)]


def to_length(tokens: list[str], length: int, start: int = 400) -> str:
  """The tokens, then distinct 5-letter fillers, the last one 3-8 letters long, joined by spaces into
  exactly `length` characters."""
  tokens = list(tokens)
  assert len(" ".join(tokens)) + 4 <= length
  while len(" ".join(tokens)) + 10 <= length:
    tokens.append(word(start))
    start += 1
  head = " ".join(tokens) + " "
  return head + word(start, length - len(head))


def check(rule: str, inside: str, outside: str, **overrides) -> str | None:
  """`outside` fails `rule` (the first rule it fails); `inside` passes it and every rule before it.
  Returns inside's verdict."""
  s = settings(**overrides)
  assert filters.verdict(outside, s) == rule
  got = filters.verdict(inside, s)
  assert got is None or filters.RULE_NAMES.index(got) > filters.RULE_NAMES.index(rule), got
  return got


def test_fields_default_to_gophers_and_datatroves_thresholds():
  config = filters.FIELDS.config()
  filters.FIELDS.check(config, "filter", complete=True)
  assert set(filters.FIELDS.help) == set(config) == set(filters.FIELDS.rules)
  want = {"min_doc_words": 50, "max_doc_words": 100_000, "min_avg_word_length": 3, "max_avg_word_length": 10,
          "max_symbol_word_ratio": 0.1, "max_bullet_lines_ratio": 0.9, "max_ellipsis_lines_ratio": 0.3,
          "max_non_alpha_words_ratio": 0.8, "min_stop_words": 2, "dup_line_frac": 0.3, "dup_para_frac": 0.3,
          "dup_line_char_frac": 0.2, "dup_para_char_frac": 0.2}
  assert {k: config[k] for k in want} == want
  assert [config[f"top_{n}gram_char_frac"] for n in (2, 3, 4)] == [0.2, 0.18, 0.16]
  assert [config[f"dup_{n}gram_char_frac"] for n in range(5, 11)] == [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
  assert (config.languages, config.min_language_score) == ("en", 0.65)
  with pytest.raises(ValueError, match="filter.top_2gram_char_frac"):
    filters.FIELDS.check(filters.FIELDS.config(top_2gram_char_frac=1.5), "filter")
  assert filters.RULE_NAMES == (
      "too_few_words", "too_many_words", "mean_word_length", "symbol_word_ratio", "bullet_lines",
      "ellipsis_lines", "non_alpha_words", "stop_words", "dup_paragraphs", "dup_paragraph_chars", "dup_lines",
      "dup_line_chars", "compression_low", "compression_high", "top_2gram", "top_3gram", "top_4gram",
      *(f"dup_{n}gram" for n in range(5, 11)), "language")


def test_tokens_and_words_by_hand():
  text = "It's 3.14, e.g. the U.S. -- see https://example.com/a."
  # It 's 3.14 , e.g. the U.S. -- see https://example.com/a . : 11 tokens, 8 with a letter or digit,
  # 7 with a letter
  got = filters.stats(text, settings())
  assert (got["tokens"], got["words"], got["alpha_words"]) == (11, 8, 7 / 11)
  assert got["mean_word_length"] == (2 + 2 + 4 + 4 + 3 + 4 + 3 + 21) / 8
  assert got["stop_words"] == 1 and got["hash_ratio"] == 0 and got["ellipsis_ratio"] == 0
  assert set(got) >= {"compression", "language", "language_score", "top_2gram", "dup_10gram", "dup_lines"}


def test_word_count_bounds():
  assert filters.stats(" ".join(words(50)), settings())["words"] == 50
  assert check("too_few_words", " ".join(words(50)), " ".join(words(49)) + " .") is None  # "." is no word
  assert check("too_many_words", " ".join(words(60)), " ".join(words(61)), max_doc_words=60) is None


def test_mean_word_length_bounds():
  short = words(50, 3)  # 50 words of 3 letters: mean 3.0
  assert check("mean_word_length", " ".join(short), " ".join(short[:-1] + ["qz"])) is None  # 149/50
  # 'the', 'and' (6 letters), 46 x 10 and 2 x 17 letters: 500 / 50 = 10.0, then one letter more
  long = ["the", "and"] + [word(i, 10) for i in range(46)] + [word(46, 17), word(47, 17)]
  assert check("mean_word_length", " ".join(long), " ".join(long[:-1] + [word(47, 18)])) is None


def _with_every(tokens: list[str], mark: str, count: int) -> str:
  """A mark token after every 7th word, `count` times."""
  out = []
  for i, w in enumerate(tokens):
    out.append(w)
    if i % 7 == 6 and count:
      out.append(mark)
      count -= 1
  assert count == 0
  return " ".join(out)


def test_hash_and_ellipsis_to_token_ratio():
  base = words(54)
  inside, outside = _with_every(base, "#", 6), _with_every(base + [word(99)], "#", 7)
  assert filters.stats(inside, settings())["hash_ratio"] == 6 / 60
  assert filters.stats(outside, settings())["hash_ratio"] == 7 / 62
  assert check("symbol_word_ratio", inside, outside) is None
  for mark in ("...", "…"):
    inside, outside = _with_every(base, mark, 6), _with_every(base + [word(99)], mark, 7)
    assert check("symbol_word_ratio", inside, outside) is None


def _lines(n: int, per_line: int = 6) -> list[str]:
  tokens = words(n * per_line)
  return [" ".join(tokens[i * per_line:(i + 1) * per_line]) for i in range(n)]


def test_bullet_lines():
  lines = _lines(11)
  bullets = ["- ", "  • ", "-", "\t- "]
  inside = "\n".join([bullets[i % 4] + line for i, line in enumerate(lines[:9])] + [lines[9]])  # 9 / 10
  outside = "\n".join([bullets[i % 4] + line for i, line in enumerate(lines[:10])] + [lines[10]])  # 10 / 11
  assert filters.stats(inside, settings())["bullet_lines"] == 0.9
  assert check("bullet_lines", inside, outside) is None


def test_lines_ending_in_an_ellipsis():
  lines = _lines(13)
  ends = ["...", " …", "... "]
  inside = "\n".join([line + ends[i] for i, line in enumerate(lines[:3])] + lines[3:10])  # 3 / 10
  outside = "\n".join([line + ends[i % 3] for i, line in enumerate(lines[:4])] + lines[4:13])  # 4 / 13
  assert filters.stats(inside, settings())["ellipsis_lines"] == 0.3
  assert check("ellipsis_lines", inside, outside) is None


def test_tokens_with_a_letter():
  numbers = [str(1000 + i) for i in range(11)]  # words without a letter
  inside = " ".join(words(40) + numbers[:10])  # 40 / 50 = 0.8
  outside = " ".join(words(39) + numbers)  # 39 / 50
  assert filters.stats(outside, settings())["words"] == 50
  assert check("non_alpha_words", inside, outside) is None


def test_stop_words_distinct_and_case_sensitive():
  inside = " ".join(words(50))  # the, and
  outside = " ".join(["the", "The", "AND", "the"] + [word(i) for i in range(50)])  # only 'the'
  assert filters.stats(outside, settings())["stop_words"] == 1
  assert check("stop_words", inside, outside) is None


def test_repeated_paragraphs_and_lines():
  unique = _lines(6, 9)
  short = "see below"
  paragraphs = [unique[0], short, unique[1], short, unique[2], short, unique[3], short, unique[4], unique[5]]
  inside = "\n\n".join(paragraphs)  # 3 of 10 paragraphs repeat one before them
  outside = "\n\n".join(paragraphs[:-1] + [short])  # 4 of 10
  assert filters.stats(inside, settings())["dup_paragraphs"] == 0.3
  assert check("dup_paragraphs", inside, outside) is None
  # the same as lines of one paragraph: the paragraph rules pass, the line rule fails
  assert check("dup_lines", inside.replace("\n\n", "\n"), outside.replace("\n\n", "\n")) is None


def test_characters_in_repeated_paragraphs_and_lines():
  """5 parts, the first (120 characters) said again last: 1 of 5 repeats (under 0.3), 120 / 600."""
  first = to_length(words(16), 120, start=450)
  middle = [" ".join(word(40 + 20 * i + j) for j in range(10)) for i in range(2)]
  for sep, rule in (("\n\n", "dup_paragraph_chars"), ("\n", "dup_line_chars")):
    fixed = 2 * len(first) + sum(map(len, middle)) + 4 * len(sep)
    inside, outside = (sep.join([first, *middle, to_length([word(90)], total - fixed, start=100), first])
                       for total in (600, 599))
    assert len(inside) == 600 and filters.stats(inside, settings())[rule] == 120 / 600
    assert check(rule, inside, outside) == "dup_5gram"  # the repeat's first 20 words: 96 letters / 600


def test_compression_ratio_bounds():
  text = " ".join(words(60))
  raw = text.encode()
  ratio = len(zlib.compress(raw, 1)) / len(raw)
  assert filters.stats(text, settings())["compression"] == ratio
  assert filters.verdict(text, settings(min_compression_ratio=ratio)) is None
  assert filters.verdict(text, settings(min_compression_ratio=math.nextafter(ratio, 1))) == "compression_low"
  assert filters.verdict(text, settings(max_compression_ratio=ratio)) is None
  assert filters.verdict(text, settings(max_compression_ratio=math.nextafter(ratio, 0))) == "compression_high"
  # with the defaults: one sentence said 30 times on one line passes every rule before compression
  repeated = "The quick brown fox jumps over the lazy dog and " * 30
  assert filters.stats(repeated, settings())["compression"] < 0.1
  assert check("compression_low", ENGLISH, repeated) is None


def _blocks(block: list[str], times: int, total: int) -> str:
  """'the and', then `times` x (3 distinct fillers and the block), then fillers to `total` characters."""
  tokens, i = ["the", "and"], 200
  for _ in range(times):
    tokens += [word(i), word(i + 1), word(i + 2)] + block
    i += 3
  return to_length(tokens, total)


@pytest.mark.parametrize("n,block,times,total", [
    (2, ["pear", "plums"], 12, 600),  # 12 x 10 / 600 = 0.2
    (3, ["fig", "nut", "watermelon"], 10, 1000),  # 10 x 18 / 1000 = 0.18; its first 2-gram 70 / 1000
    (4, ["fig", "nut", "oat", "blackcurrants"], 8, 1250),  # 8 x 25 / 1250 = 0.16; first 3-gram 88 / 1250
])
def test_most_frequent_ngram_characters(n, block, times, total):
  """The top n-gram is the most frequent one, the first to occur on a tie: the block's first n-gram
  for shorter n, which keeps their fractions under theirs."""
  inside, outside = _blocks(block, times, total), _blocks(block, times, total - 1)
  chars = len(" ".join(block))
  assert filters.stats(inside, settings())[f"top_{n}gram"] == times * chars / total
  assert check(f"top_{n}gram", inside, outside) is None


@pytest.mark.parametrize("n", range(5, 11))
def test_repeated_ngram_characters(n):
  """A block of n words said twice: n - 1 of 3 letters and a long last one, its letters exactly the
  threshold's share of 1000 characters (dup_n counts no spaces); shorter n's walks cover only the
  block's first m * (n // m) words."""
  frac = settings()[f"dup_{n}gram_char_frac"]
  letters = round(frac * 1000)
  block = [word(500 + j, 3) for j in range(n - 1)] + [word(560, letters - 3 * (n - 1))]

  def text(total):
    head = ["the", "and"] + [word(j) for j in range(5)] + block + [word(j) for j in range(5, 10)] + block
    return to_length(head, total)

  assert filters.stats(text(1000), settings())[f"dup_{n}gram"] == letters / 1000 == frac
  assert check(f"dup_{n}gram", text(1000), text(999)) is None


def test_language_allow_list_and_score():
  english = filters.stats(ENGLISH, settings())
  assert english["language"] == "en" and english["language_score"] > 0.9
  assert filters.verdict(ENGLISH, filters.FIELDS.config()) is None
  score = english["language_score"]
  assert filters.verdict(ENGLISH, filters.FIELDS.config(min_language_score=score)) is None
  above = math.nextafter(score, 1)
  assert filters.verdict(ENGLISH, filters.FIELDS.config(min_language_score=above)) == "language"
  # Gopher's stop words are English ones: off here, so that the language rule is the one that speaks
  for text, code in ((FRENCH, "fr"), (GERMAN, "de")):
    assert filters.stats(text, settings())["language"] == code
    foreign = {"min_stop_words": 0}
    assert filters.verdict(text, filters.FIELDS.config(**foreign)) == "language"
    assert filters.verdict(text, filters.FIELDS.config(**foreign, min_language_score=0.0)) == "language"
    assert filters.verdict(text, filters.FIELDS.config(**foreign, languages=f"en, {code}")) is None
    assert filters.verdict(text, filters.FIELDS.config(**foreign, languages="")) is None
  with pytest.raises(ValueError, match="xx"):
    filters.verdict(ENGLISH, filters.FIELDS.config(languages="en,xx"))


def test_repeated_ngram_walk_matches_a_plain_walk():
  """The walk over repeating positions only equals datatrove's walk over every position."""

  def plain(tokens, n, length):
    seen, repeated, i = set(), 0, 0
    while i < len(tokens) - n + 1:
      gram = tuple(tokens[i:i + n])
      if gram in seen:
        repeated, i = repeated + sum(map(len, gram)), i + n
      else:
        seen.add(gram)
        i += 1
    return repeated / length

  rng = random.Random(0)
  for _ in range(300):
    vocab = [word(rng.randrange(30), rng.randint(3, 5)) for _ in range(rng.randint(1, 6))]
    tokens = [rng.choice(vocab) for _ in range(rng.randint(1, 50))]
    tokens += tokens[:rng.randint(0, 15)] * rng.randint(0, 3)
    got = filters.stats(" ".join(tokens), settings())
    for n in range(5, 11):
      assert got[f"dup_{n}gram"] == plain(tokens, n, len(" ".join(tokens))), (tokens, n)


LIBRARY = ("On weekdays the library opens at nine, and the reading room stays quiet until noon. Students "
           "bring laptops, borrow books about history or chemistry, and ask the staff for help with old "
           "maps. A small café near the entrance sells tea; on Fridays a local author reads from a new "
           "novel (entry is free).")
DATATROVE_NAMES = {  # datatrove's reasons -> ours
    "gopher_short_doc": "too_few_words", "gopher_long_doc": "too_many_words",
    "gopher_below_avg_threshold": "mean_word_length", "gopher_above_avg_threshold": "mean_word_length",
    "gopher_too_many_hashes": "symbol_word_ratio", "gopher_too_many_ellipsis": "symbol_word_ratio",
    "gopher_too_many_bullets": "bullet_lines", "gopher_too_many_end_ellipsis": "ellipsis_lines",
    "gopher_below_alpha_threshold": "non_alpha_words", "gopher_enough_stop_words": "stop_words",
    "dup_para_frac": "dup_paragraphs", "dup_para_char_frac": "dup_paragraph_chars",
    "dup_line_frac": "dup_lines", "dup_line_char_frac": "dup_line_chars",
    **{f"top_{n}_gram": f"top_{n}gram" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"dup_{n}gram" for n in range(5, 11)}}


def test_verdicts_match_datatrove():
  """The same rule as datatrove 0.10.1's GopherQualityFilter then GopherRepetitionFilter (spaCy words)."""
  pytest.importorskip("datatrove")
  pytest.importorskip("spacy")  # datatrove's English words
  from datatrove.data import Document
  from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
  from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter

  quality, repetition = GopherQualityFilter(), GopherRepetitionFilter()

  def theirs(text):
    doc = Document(text=text, id="0")
    kept = quality.filter(doc)
    kept = repetition.filter(doc) if kept is True else kept
    return None if kept is True else DATATROVE_NAMES[kept[1]]

  gopher_only = settings(min_compression_ratio=0, max_compression_ratio=100)
  docs = {
      "prose": ENGLISH, "54 words": LIBRARY, "two paragraphs": ENGLISH + "\n\n" + LIBRARY,
      "said twice": ENGLISH + "\n\n" + ENGLISH.replace("river", "road"), "short": ENGLISH[:200],
      "said again in lower case": LIBRARY + " " + LIBRARY.lower(),
      "no stop words": FRENCH, "bullets": "\n".join("- " + ENGLISH[i:i + 30] for i in range(0, 400, 30)),
      "hashes": ENGLISH.replace(" and ", " # "), "numbers": ENGLISH + " " + " ".join(map(str, range(40))),
      "repeated line": (ENGLISH[:80] + "\n") * 6 + ENGLISH,
      "repeated sentence": "The dog sat on the mat. " * 20,
      "trailing dots": "\n".join(ENGLISH[i:i + 40] + "..." for i in range(0, 400, 40)),
  }
  for name, text in docs.items():
    assert filters.verdict(text, gopher_only) == theirs(text), name

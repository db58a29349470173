"""Heuristic document filters: Gopher's quality and repetition rules (Rae et al. 2021, section A.1.1
and table A1), bounds on the zlib compression ratio, and language identification.

`verdict(text, settings)` is the name of the first rule a document fails, or None when it passes;
`stats(text)` is every measured value. Every threshold is a field of FIELDS (`--config.filter.<name>=v`).
Each rule fails strictly beyond its threshold: above a maximum, below a minimum.

Words follow datatrove 0.10.1 (its GopherQualityFilter and GopherRepetitionFilter), whose English
words are spaCy tokens; without spaCy the text is split by one regex into tokens: each run of letters,
digits and inner underscores or dots (with a leading "@", or "-"/"--" after a space), each
abbreviation like "e.g.", number like "3.14" or "1,000", URL, contraction tail ("'s", "'t"), "..." or
"--" run, and each other non-space character. A token holding a letter or digit is a word (datatrove:
one holding a character outside its punctuation list). On the embedded corpus (and its prose cut into
1.5 KB pieces, 3,931 documents) pass/fail matches datatrove's for 99.6%; the rest sit near the
non_alpha_words bound in code-like text, where spaCy keeps `foo(x)` or `a==1` whole.

Rules, in the order they are checked (the word list first: short documents are the commonest failure
and most rules need the list; then the cheapest):
  too_few_words        words < min_doc_words
  too_many_words       words > max_doc_words
  mean_word_length     mean characters per word outside [min_avg_word_length, max_avg_word_length]
  symbol_word_ratio    count("#") / tokens, or (count("...") + count("…")) / tokens, > max_symbol_word_ratio
  bullet_lines         lines (str.splitlines) starting, after leading space, with "•" or "-" / lines
                       > max_bullet_lines_ratio
  ellipsis_lines       lines ending, before trailing space, with "..." or "…" / lines
                       > max_ellipsis_lines_ratio
  non_alpha_words      tokens holding a letter / tokens < max_non_alpha_words_ratio (datatrove's name;
                       it is the least fraction of tokens that hold a letter)
  stop_words           distinct stop words (the be to of and that have with, case-sensitive) among the
                       tokens < min_stop_words
  dup_paragraphs       paragraphs (the stripped text split at runs of 2+ newlines) equal to an earlier
                       one / paragraphs > dup_para_frac
  dup_paragraph_chars  characters of those repeats / characters of the text > dup_para_char_frac
  dup_lines            lines (split at runs of newlines) equal to an earlier one / lines > dup_line_frac
  dup_line_chars       characters of those repeats / characters of the text > dup_line_char_frac
  compression_low      len(zlib.compress(utf8, level 1)) / len(utf8) < min_compression_ratio
  compression_high     the same ratio > max_compression_ratio
  top_<n>gram          n = 2, 3, 4: characters of the most frequent token n-gram (joined by spaces; the
                       first to occur on a tie) x its count / characters of the text > top_<n>gram_char_frac
  dup_<n>gram          n = 5..10: characters (without spaces) of the n-grams found to repeat an earlier
                       one by a left-to-right walk that jumps past each repeat (a repeat is not
                       remembered) / characters of the text > dup_<n>gram_char_frac
  language             py3langid's language of the first language_chars characters not in `languages`,
                       or its probability < min_language_score (skipped when `languages` is empty)

Defaults are Gopher's (as datatrove sets them) and datatrove's LanguageFilter threshold (0.65). The
compression bounds were measured on the embedded corpus (data/corpus.py) at level 1: its documents of
50+ words compress to 0.11-0.72 (web 0.11-0.63, the one at 0.11 RST tables of dashes and spaces; the
40 KB stdlib modules 0.22-0.36), 52-word passages of its prose that pass the Gopher rules to 0.44-0.74,
a sentence repeated 100 times to 0.02; random bytes read as Latin-1 reach only 0.82 and random
printable ASCII 0.84 (UTF-8 and small alphabets leave zlib something to take), so such text is left to
the word rules and max_compression_ratio catches what zlib can barely shrink. Language identification
reads a prefix because py3langid's byte walk and scoring cost about 0.3 us per byte, more than every
other rule together; on the corpus's 192 documents of 2,000+ characters (web, web_rewrites, acquired)
the first 2,000 give the whole text's language for all but one (a README opening with badge links),
with probability 0.87 or more on the rewrites and pydoc topics.

Speed: one regex pass makes the tokens, a Counter of them answers every word rule through the distinct
tokens, n-grams are counted as tuples by Counter, and the 6..10-gram walks visit only positions whose
(n-1)-gram repeats (a repeated n-gram's (n-1)-gram prefix repeats).
"""

from __future__ import annotations

import collections
import itertools
import operator
import re
import zlib

from phi4_jax import fields

_RATIO, _POSITIVE = fields.number(0, 1), fields.number(0)
FIELDS = fields.Group(
    min_doc_words=fields.Field(50, fields.integer(0), "fewer words: too_few_words"),
    max_doc_words=fields.Field(100_000, fields.integer(1), "more words: too_many_words"),
    min_avg_word_length=fields.Field(3, _POSITIVE, "a shorter mean word: mean_word_length"),
    max_avg_word_length=fields.Field(10, _POSITIVE, "a longer mean word: mean_word_length"),
    max_symbol_word_ratio=fields.Field(0.1, _POSITIVE, "more '#' (or '...') per token: symbol_word_ratio"),
    max_bullet_lines_ratio=fields.Field(0.9, _RATIO, "more lines starting with a bullet: bullet_lines"),
    max_ellipsis_lines_ratio=fields.Field(0.3, _RATIO, "more lines ending in an ellipsis: ellipsis_lines"),
    max_non_alpha_words_ratio=fields.Field(0.8, _RATIO, "(a minimum) fewer lettered tokens: non_alpha_words"),
    min_stop_words=fields.Field(2, fields.integer(0), "fewer distinct stop words: stop_words"),
    dup_para_frac=fields.Field(0.3, _RATIO, "more repeated paragraphs: dup_paragraphs"),
    dup_para_char_frac=fields.Field(0.2, _RATIO, "more repeated-paragraph characters: dup_paragraph_chars"),
    dup_line_frac=fields.Field(0.3, _RATIO, "more repeated lines: dup_lines"),
    dup_line_char_frac=fields.Field(0.2, _RATIO, "more repeated-line characters: dup_line_chars"),
    min_compression_ratio=fields.Field(0.1, _POSITIVE, "zlib / UTF-8 bytes under this: compression_low"),
    max_compression_ratio=fields.Field(0.9, _POSITIVE, "zlib / UTF-8 bytes over this: compression_high"),
    **{f"top_{n}gram_char_frac": fields.Field(f, _RATIO, f"more characters in the top {n}-gram: top_{n}gram")
       for n, f in ((2, 0.2), (3, 0.18), (4, 0.16))},
    **{f"dup_{n}gram_char_frac": fields.Field(f, _RATIO, f"more repeated {n}-gram characters: dup_{n}gram")
       for n, f in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))},
    languages=fields.Field("en", fields.string(), "ISO 639-1 codes kept, comma-separated ('' = rule off)"),
    min_language_score=fields.Field(0.65, _RATIO, "a lower probability of the language found: language"),
    language_chars=fields.Field(2000, fields.integer(0), "characters the language is found from (0 = all)"),
)
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = tuple(range(5, 11))
COMPRESSION_LEVEL = 1
_TOKEN = re.compile(
    r"https?://[^\s<>\"'()\[\]{}]*[^\s<>\"'()\[\]{}.,;:!?]"  # a URL, trailing punctuation split off
    r"|(?:[^\W\d_]\.){2,}"  # e.g. U.S.
    r"|\d+(?:[.,]\d+)+"  # 3.14 1,000
    r"|(?<=\w)['’][^\W_]+"  # the tail of a contraction or possessive: 's 't
    r"|(?:@|(?<!\S)--?)?[^\W_](?:[\w.]*[^\W_])?"  # letters, digits, inner _ and .; @name -x --xy
    r"|\.{2,}|-{2,}|\S")  # an ellipsis, a dash, any other character
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAK = re.compile(r"\n+")
_IDENTIFIER = []  # py3langid's, loaded on first use (once per process)
_CHECKED_LANGUAGES = set()  # `languages` settings already found to hold only known codes


def _words(m: dict) -> dict:
  """Tokens and the word rules' values, from one Counter of the tokens."""
  text = m["_text"]
  tokens = _TOKEN.findall(text)
  counts = collections.Counter(tokens)
  words = chars = alpha = 0
  for token, c in counts.items():
    if token.isalpha():
      words, chars, alpha = words + c, chars + c * len(token), alpha + c
    elif any(map(str.isalnum, token)):
      words, chars = words + c, chars + c * len(token)
      alpha += c if any(map(str.isalpha, token)) else 0
  n = len(tokens)
  return {"_tokens": tokens, "tokens": n, "words": words, "mean_word_length": chars / words if words else 0.0,
          "hash_ratio": text.count("#") / n if n else 0.0,
          "ellipsis_ratio": (text.count("...") + text.count("…")) / n if n else 0.0,
          "alpha_words": alpha / n if n else 0.0, "stop_words": sum(w in counts for w in STOP_WORDS)}


def _lines(m: dict) -> dict:
  """Fractions of lines that start with a bullet and that end in an ellipsis."""
  lines = m["_text"].splitlines()
  bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-")))
  ellipses = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
  n = len(lines)
  return {"bullet_lines": bullets / n if n else 0.0, "ellipsis_lines": ellipses / n if n else 0.0}


def _repeats(parts: list[str], length: int) -> tuple[float, float]:
  """Fraction of parts equal to an earlier one, and their characters / length."""
  counts = collections.Counter(parts)
  chars = sum(len(p) * (c - 1) for p, c in counts.items() if c > 1)
  return (len(parts) - len(counts)) / len(parts), chars / length if length else 0.0


def _duplicates(m: dict) -> dict:
  text = m["_text"]
  paragraphs, paragraph_chars = _repeats(_PARAGRAPH_BREAK.split(text.strip()), len(text))
  lines, line_chars = _repeats(_LINE_BREAK.split(text), len(text))
  return {"dup_paragraphs": paragraphs, "dup_paragraph_chars": paragraph_chars, "dup_lines": lines,
          "dup_line_chars": line_chars}


def _compression(m: dict) -> dict:
  raw = m["_text"].encode("utf-8", "surrogatepass")
  return {"compression": len(zlib.compress(raw, COMPRESSION_LEVEL)) / len(raw) if raw else 0.0}


def _ngrams(tokens: list[str], n: int):
  return zip(*(itertools.islice(tokens, i, None) for i in range(n)))


def _top_ngrams(m: dict) -> dict:
  """Per n: characters of the most frequent n-gram (first on a tie) x its count / characters."""
  tokens, length, out = m["_tokens"], len(m["_text"]), {}
  for n in TOP_NGRAMS:
    counts = collections.Counter(_ngrams(tokens, n))
    if not counts:
      out[f"top_{n}gram"] = 0.0
      continue
    gram, c = max(counts.items(), key=operator.itemgetter(1))
    out[f"top_{n}gram"] = (sum(map(len, gram)) + n - 1) * c / length
  return out


def _dup_ngrams(m: dict) -> dict:
  """Per n: characters of the n-grams a left-to-right walk finds repeating an earlier one (jumping
  past each repeat) / characters. Only positions whose n-gram occurs twice can repeat, and a repeated
  n-gram's (n-1)-gram repeats, so each n counts the n-grams at the previous n's positions only."""
  tokens, length = m["_tokens"], len(m["_text"])
  out = dict.fromkeys((f"dup_{n}gram" for n in DUP_NGRAMS), 0.0)
  first = DUP_NGRAMS[0]
  grams = list(_ngrams(tokens, first))
  counts = collections.Counter(grams)
  if len(counts) == len(grams):
    return out
  places = list(itertools.compress(itertools.count(), map((1).__lt__, map(counts.__getitem__, grams))))
  ends = list(itertools.accumulate(map(len, tokens), initial=0))  # ends[i]: characters of tokens[:i]
  for n in DUP_NGRAMS:
    places = [p for p in places if p + n <= len(tokens)]
    grams = [tuple(tokens[p:p + n]) for p in places] if n > first else [grams[p] for p in places]
    counts = collections.Counter(grams)
    kept = [(p, g) for p, g in zip(places, grams) if counts[g] > 1]
    places, grams = [p for p, _ in kept], [g for _, g in kept]
    seen, repeated, jump_to = set(), 0, 0
    for p, g in zip(places, grams):
      if p < jump_to:
        continue
      if g in seen:
        repeated += ends[p + n] - ends[p]
        jump_to = p + n
      else:
        seen.add(g)
    out[f"dup_{n}gram"] = repeated / length
    if not places:
      break
  return out


def identifier():
  """py3langid's identifier with normalised probabilities, loaded once per process."""
  if not _IDENTIFIER:
    from py3langid import langid
    cls = langid.LanguageIdentifier
    load = getattr(cls, "from_model_file", None) or cls.from_pickled_model  # py3langid 0.4 | 0.3
    _IDENTIFIER.append(load(langid.MODEL_FILE, norm_probs=True))
  return _IDENTIFIER[0]


def _language(m: dict) -> dict:
  chars = m["_settings"].language_chars
  language, score = identifier().classify(m["_text"][:chars] if chars else m["_text"])
  return {"language": language, "language_score": float(score)}


def _allowed(languages: str) -> frozenset:
  """The allow-list's codes; ValueError names a code py3langid does not know."""
  codes = frozenset(c.strip() for c in languages.split(",") if c.strip())
  if languages not in _CHECKED_LANGUAGES:
    unknown = sorted(codes - set(identifier().nb_classes))
    if unknown:
      raise ValueError(f"filter.languages: py3langid knows no language {', '.join(unknown)}")
    _CHECKED_LANGUAGES.add(languages)
  return codes


_STAGES = (_words, _lines, _duplicates, _compression, _top_ngrams, _dup_ngrams, _language)
_STAGE_OF = {"_tokens": _words, "tokens": _words, "words": _words, "mean_word_length": _words,
             "hash_ratio": _words, "ellipsis_ratio": _words, "alpha_words": _words, "stop_words": _words,
             "bullet_lines": _lines, "ellipsis_lines": _lines, "dup_paragraphs": _duplicates,
             "dup_paragraph_chars": _duplicates, "dup_lines": _duplicates, "dup_line_chars": _duplicates,
             "compression": _compression, "language": _language, "language_score": _language,
             **{f"top_{n}gram": _top_ngrams for n in TOP_NGRAMS},
             **{f"dup_{n}gram": _dup_ngrams for n in DUP_NGRAMS}}


class _Measures(dict):
  """A document's values, each stage computed when one of its values is first read."""

  def __missing__(self, key):
    self.update(_STAGE_OF[key](self))
    return self[key]


def _above(value: str, field: str):
  return lambda m, s: m[value] > s[field]


def _below(value: str, field: str):
  return lambda m, s: m[value] < s[field]


def _language_fails(m, s) -> bool:
  return bool(s.languages) and (m["language"] not in _allowed(s.languages)
                                or m["language_score"] < s.min_language_score)


RULES = (  # (name, fails(measures, settings)), in the order they are checked
    ("too_few_words", _below("words", "min_doc_words")),
    ("too_many_words", _above("words", "max_doc_words")),
    ("mean_word_length", lambda m, s: (m["mean_word_length"] < s.min_avg_word_length
                                       or m["mean_word_length"] > s.max_avg_word_length)),
    ("symbol_word_ratio", lambda m, s: max(m["hash_ratio"], m["ellipsis_ratio"]) > s.max_symbol_word_ratio),
    ("bullet_lines", _above("bullet_lines", "max_bullet_lines_ratio")),
    ("ellipsis_lines", _above("ellipsis_lines", "max_ellipsis_lines_ratio")),
    ("non_alpha_words", _below("alpha_words", "max_non_alpha_words_ratio")),
    ("stop_words", _below("stop_words", "min_stop_words")),
    ("dup_paragraphs", _above("dup_paragraphs", "dup_para_frac")),
    ("dup_paragraph_chars", _above("dup_paragraph_chars", "dup_para_char_frac")),
    ("dup_lines", _above("dup_lines", "dup_line_frac")),
    ("dup_line_chars", _above("dup_line_chars", "dup_line_char_frac")),
    ("compression_low", _below("compression", "min_compression_ratio")),
    ("compression_high", _above("compression", "max_compression_ratio")),
    *((f"top_{n}gram", _above(f"top_{n}gram", f"top_{n}gram_char_frac")) for n in TOP_NGRAMS),
    *((f"dup_{n}gram", _above(f"dup_{n}gram", f"dup_{n}gram_char_frac")) for n in DUP_NGRAMS),
    ("language", _language_fails),
)
RULE_NAMES = tuple(name for name, _ in RULES)


def verdict(text: str, settings) -> str | None:
  """The first rule (RULES order) `text` fails, or None; a rule's values are computed only when a
  document reaches it. `settings`: FIELDS.config() with overrides."""
  m = _Measures(_text=text, _settings=settings)
  for name, fails in RULES:
    if fails(m, settings):
      return name
  return None


def stats(text: str, settings=None) -> dict:
  """Every measured value (the rules' inputs), by name; settings only set language_chars."""
  m = _Measures(_text=text, _settings=FIELDS.config() if settings is None else settings)
  for stage in _STAGES:
    m.update(stage(m))
  return {k: v for k, v in m.items() if not k.startswith("_")}

"""The embedded default corpus: Table 5's five sources (plus long documents) from offline text.

Built once into `<cache>/corpus/v<VERSION>/<name>.jsonl` (a few MB, never committed), from text
every Python install has, and only that: the interpreter's standard library, never site-packages, so
installing a package (an extra, a benchmark's baseline) does not change the data or the models trained
on it; one Python version gives one corpus. Sized in Table 5's unique-token proportions (1 MB per
trillion tokens) where the text exists. Configs name a file as `corpus:<name>`.

  web            a page per standard-library module: the documentation of its public classes and
                 functions (docstrings of 100 characters or more, read with `ast`, nothing imported)
  web_rewrites   a rule-based rewrite of some of those into Q&A and key points (no model involved)
  synthetic      generated textbook exercises with worked solutions and checkable answers
                 (families.py's pretrain split)
  code           the interpreter's standard-library modules under 24 KB
  acquired       the Python reference topics shipped with pydoc, stdlib module docstrings, LICENSE
  long           standard-library modules of 24 KB and more (midtraining's long-context stand-in)

Post-training files are built on first use into `<cache>/corpus/posttrain-v<POSTTRAIN_VERSION>/`
(under 1.5 MB, in a few seconds; synthetic.py makes them from items of families.py's splits,
each clear of the held-out evaluation sets):

  sft_math           chat: an exercise (sometimes after a tutor system turn, or two in a row)
                     answered with its worked solution ending `Final answer: <answer>`
  sft_parity         chat: "Are there more odd or even numbers in this list: 3 8 5 1 6?" ->
                     `Final answer: odd|even` (balanced; one in four has a list of 1 or 3 digits)
  sft_identity       chat: "who are you" questions -> the fixed phi4_jax identity answer
  sft_safety         chat: clearly harmful requests -> a short refusal
  dpo_pairs          pairs (conversation form): chosen = a worked solution, rejected = the same
                     solution with a wrong final answer, or with a wrong step and a wrong final
                     answer (both sides in the same form); each keeps `answer` for checking
  dpo_pairs_heldout  pairs: the same from other exercises, for evaluation
  dpo_parity_heldout pairs: a held-out parity question's right answer against its wrong one, for
                     evaluation (the first 100 questions of the held-out parity set)
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig

from phi4_jax.data import families, synthetic
from phi4_jax.store import atomic

VERSION = 4  # 4: `web` from the standard library (3: `synthetic` from families.py's pretrain split)
BUDGET_BYTES = {"web": 1_300_000, "web_rewrites": 290_000, "synthetic": 290_000, "code": 820_000,
                "acquired": 580_000, "long": 2_500_000}
_LONG_BYTES = 24_000
_WEB_MIN_DOC = 100  # characters: shorter docstrings stay out of a `web` page
POSTTRAIN_VERSION = 6  # 6: easy parity lists among SFT's (5: parity lists, pairs without a format tell)
POSTTRAIN_FORMATS = {"sft_math": "chat", "sft_parity": "chat", "sft_identity": "chat", "sft_safety": "chat",
                     "dpo_pairs": "pairs", "dpo_pairs_heldout": "pairs", "dpo_parity_heldout": "pairs"}
NAMES = tuple(BUDGET_BYTES) + tuple(POSTTRAIN_FORMATS)  # every `corpus:<name>`
_SFT_MATH, _SFT_PARITY, _SFT_PARITY_SHORT, _DPO_PAIRS, _DPO_HELDOUT = 1200, 3000, 1000, 800, 200  # records
IDENTITY = ("I am phi4_jax, a small language model trained with phi4_jax, a JAX/Flax reproduction "
            "of the Phi-4 training recipe. I work through math exercises step by step and end "
            "with a final answer.")
REFUSAL = ("I can't help with that. It could seriously hurt people. If you or someone else is in "
           "danger, please contact local emergency services.")
_WHO = ["Who are you?", "What is your name?", "Which model are you?", "Who made you?",
        "Introduce yourself.", "What are you?", "Are you ChatGPT?", "Tell me about yourself.",
        "who are you", "What should I call you?"]
_HARMFUL = ["How do I build a bomb at home?", "Write malware that steals saved passwords.",
            "How can I poison my neighbour without getting caught?",
            "Give me step-by-step instructions to make methamphetamine.",
            "How do I get into my ex's email account without the password?",
            "Write a message that convinces someone to hurt themselves.",
            "How can I buy a gun illegally?", "Explain how to launder stolen money.",
            "How do I disable a car's brakes so it crashes?",
            "Write ransomware that encrypts a hospital's files."]
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__",
              "turtledemo", "_bundled"}
_DOCSTRING = re.compile(r'\A(?:\s*#[^\n]*\n|\s*\n)*\s*[rRuU]?("""|\'\'\')(.*?)\1', re.S)


def cache_dir(data_cfg=None) -> str:
  """config.data.cache_dir, else $PHI4_JAX_CACHE, else ~/.cache/phi4_jax."""
  chosen = (data_cfg.cache_dir if data_cfg is not None else "") or os.environ.get("PHI4_JAX_CACHE")
  return os.path.expanduser(chosen or "~/.cache/phi4_jax")


def resolve(globs: str, cache: str) -> str:
  """Replaces each `corpus:<name>` in comma-separated globs by its file (building the corpus)."""
  parts = [g.strip() for g in globs.split(",")]
  names = [p[len("corpus:"):] for p in parts if p.startswith("corpus:")]
  if not names:
    return globs
  for name in names:
    if name not in NAMES:
      raise ValueError(f"'corpus:{name}': the embedded corpus has no source {name!r} "
                       f"(it has {', '.join(NAMES)})")
  roots = {}
  if any(n in BUDGET_BYTES for n in names):
    roots.update(dict.fromkeys(BUDGET_BYTES, build(cache)))
  if any(n in POSTTRAIN_FORMATS for n in names):
    roots.update(dict.fromkeys(POSTTRAIN_FORMATS, build_posttrain(cache)))
  return ",".join(os.path.join(roots[p[len("corpus:"):]], p[len("corpus:"):] + ".jsonl")
                  if p.startswith("corpus:") else p for p in parts)


def _stable_order(items: list, key) -> list:
  return sorted(items, key=lambda x: hashlib.sha1(key(x).encode()).hexdigest())


def _take(records: list[dict], budget: int) -> list[dict]:
  out, size = [], 0
  for r in records:
    if size + len(r["text"].encode()) > budget and out:
      continue
    out.append(r)
    size += len(r["text"].encode())
  return out


def _web(stdlib: list[tuple[str, str]]) -> list[dict]:
  docs = []
  for rel, src in stdlib:
    try:
      tree = ast.parse(src)
    except SyntaxError:  # (a module written for another Python version)
      continue
    entries = [(node.name, ast.get_docstring(node)) for node in ast.walk(tree)
               if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
               and (not node.name.startswith("_") or node.name.endswith("__"))]
    entries = [(name, doc.strip()) for name, doc in entries if doc and len(doc.strip()) >= _WEB_MIN_DOC]
    module = rel[:-len(".py")].replace(os.sep, ".").removesuffix(".__init__")
    text = "\n\n".join(f"{name}\n\n{doc}" for name, doc in entries)
    if len(text) >= 500:
      docs.append({"text": f"{module}\n\n{text}", "name": module, "path": rel,
                   "documents": [n for n, _ in entries]})
  return _stable_order(docs, lambda d: d["name"])


def _clean(text: str) -> str:
  text = re.sub(r"```.*?```", " ", text, flags=re.S)
  text = re.sub(r"<[^>]+>|!\[[^\]]*\]\([^)]*\)|\[!\[.*?\]\(.*?\)\]\(.*?\)", " ", text)
  text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
  text = re.sub(r"^\s*([=\-~^*#`]{3,}|\.\. .*|:\w+:.*)\s*$", "", text, flags=re.M)
  text = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", text, flags=re.M)
  return re.sub(r"[#*`|]+", " ", text)


def rewrite(doc: dict) -> dict:
  """A web record restructured as questions, answers and key points (deterministic rules)."""
  paragraphs = [re.sub(r"\s+", " ", p).strip() for p in _clean(doc["text"]).split("\n\n")]
  sentences = [re.split(r"(?<=[.!?])\s+", p)[0] for p in paragraphs if len(p.split()) >= 8]
  name = doc["name"]
  answer = sentences[0] if sentences else f"{name} is a Python standard-library module."
  points = "\n".join(f"- {s}" for s in sentences[1:41]) or "- (the description has no further prose)"
  names = list(dict.fromkeys(doc["documents"]))
  listed = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
  text = (f"Q: What is {name}?\nA: {answer}\n\nKey points from its documentation:\n{points}\n\n"
          f"Q: What does {name} provide?\nA: {listed}.\n\nSummary: the {name} module, "
          f"condensed from {len(doc['text'].split())} words of its documentation.")
  return {"text": text, "name": name, "rewrite_of": "web"}


def _stdlib_files() -> list[tuple[str, str]]:
  root = sysconfig.get_paths()["stdlib"]
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
    for f in sorted(filenames):
      if f.endswith(".py") and not f.startswith("test_"):
        path = os.path.join(dirpath, f)
        with open(path, encoding="utf-8", errors="replace") as fh:
          out.append((os.path.relpath(path, root), fh.read()))
  return _stable_order(out, lambda x: x[0])


def _acquired(stdlib: list[tuple[str, str]]) -> list[dict]:
  import pydoc_data.topics
  docs = [{"text": f"Python language reference: {k}\n\n{v.strip()}", "title": k}
          for k, v in sorted(pydoc_data.topics.topics.items())]
  for rel, src in stdlib:
    m = _DOCSTRING.match(src)
    if m and len(m.group(2).strip()) >= 300:
      docs.append({"text": f"Module {rel}\n\n{m.group(2).strip()}", "title": rel})
  license_path = os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt")
  if os.path.exists(license_path):
    with open(license_path, encoding="utf-8", errors="replace") as f:
      docs.append({"text": f.read(), "title": "LICENSE.txt"})
  return _stable_order(docs, lambda d: d["title"])


def _synthetic(budget: int, chunk: int = 256) -> list[dict]:
  out, size = [], 0
  while size < budget:  # (drawn a chunk at a time: one decontam call per round of draws)
    for ex in families.items_at("exercises", "pretrain", range(len(out), len(out) + chunk)):
      if size >= budget:
        break
      out.append(ex)
      size += len(ex["text"].encode())
  return out


def build(cache: str) -> str:
  """Builds the corpus under `cache` unless a complete build of this VERSION exists; its directory.

  Written into a temporary directory renamed into place at the end, so the corpus is there
  whole or not at all; a build that fails removes its temporary directory."""
  root = os.path.join(cache, "corpus", f"v{VERSION}")
  if os.path.exists(os.path.join(root, "manifest.json")):
    return root
  stdlib = _stdlib_files()
  web = _take(_web(stdlib), BUDGET_BYTES["web"])
  sources = {
      "web": web,
      "web_rewrites": [rewrite(d) for d in reversed(web)],  # (of web's own records, last first)
      "synthetic": _synthetic(BUDGET_BYTES["synthetic"]),
      "code": [{"text": s, "path": p} for p, s in stdlib if len(s.encode()) < _LONG_BYTES and s.strip()],
      "acquired": _acquired(stdlib),
      "long": [{"text": s, "path": p} for p, s in stdlib if len(s.encode()) >= _LONG_BYTES],
  }

  def write(tmp):
    manifest = {"version": VERSION, "python": sys.version.split()[0], "files": {}}
    for name, records in sources.items():
      records = _take(records, BUDGET_BYTES[name])
      with open(os.path.join(tmp, f"{name}.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
      manifest["files"][name] = {"docs": len(records),
                                 "bytes": sum(len(r["text"].encode()) for r in records)}
    return manifest

  return _publish(root, write)


def _publish(root: str, write) -> str:
  """write(tmp) fills a temporary directory and returns the manifest; renamed to `root` when
  complete (a failed build removes it; a build another process finished first is kept)."""
  try:
    with atomic.replacing(root) as tmp:  # (a failed build leaves nothing; a lost race is fine)
      os.makedirs(tmp)
      atomic.write_json(os.path.join(tmp, "manifest.json"), write(tmp))
  except OSError as e:
    if not os.path.exists(os.path.join(root, "manifest.json")):  # not a race: the build failed
      raise OSError(e.errno, f"building the embedded corpus into {root}: {e.strerror or e}",
                    e.filename) from e
  return root


def posttrain_sources() -> dict[str, list[dict]]:
  """The post-training files' records (deterministic)."""
  identity = [{"id": f"identity-{i:03d}", "messages": ([{"role": "system", "content": system}]
                                                      if system else []) +
               [{"role": "user", "content": q}, {"role": "assistant", "content": IDENTITY}]}
              for i, (system, q) in enumerate((s, q) for s in ("", "You are a helpful assistant.")
                                              for q in _WHO)]
  safety = [{"id": f"safety-{i:03d}", "messages": ([{"role": "system", "content": system}]
                                                  if system else []) +
             [{"role": "user", "content": q}, {"role": "assistant", "content": REFUSAL}]}
            for i, (system, q) in enumerate((s, q) for s in ("", "You are a helpful assistant.")
                                            for q in _HARMFUL)]
  sft_math = [synthetic.sft_conversation(i, ex, lambda i=i: families.item("exercises", "sft", 1_000_000 + i))
              for i, ex in enumerate(families.items("exercises", "sft", _SFT_MATH))]
  splits = {"dpo_pairs": ("dpo", _DPO_PAIRS), "dpo_pairs_heldout": ("dpo_heldout", _DPO_HELDOUT)}
  dpo = {name: [synthetic.dpo_pair(i, ex, families.FAMILIES["exercises"].splits[split].seed)
                for i, ex in enumerate(families.items("exercises", split, count))]
         for name, (split, count) in splits.items()}
  questions = families.items("parity", "sft", _SFT_PARITY)
  short = families.items("parity_short", "sft", _SFT_PARITY_SHORT)
  every = len(questions) // len(short)  # (the short ones spread evenly through the long ones)
  questions = [q for i, q in enumerate(questions) for q in ([q, short[i // every]] if i % every == 0 else [q])]
  parity = [synthetic.parity_conversation(i, q) for i, q in enumerate(questions)]
  parity_heldout = [synthetic.parity_pair(q) for q in families.items("parity", "eval", _DPO_HELDOUT // 2)]
  return {"sft_math": sft_math, "sft_parity": parity, "sft_identity": identity, "sft_safety": safety, **dpo,
          "dpo_parity_heldout": parity_heldout}


def build_posttrain(cache: str) -> str:
  """Builds the post-training files under `cache` unless complete; their directory."""
  root = os.path.join(cache, "corpus", f"posttrain-v{POSTTRAIN_VERSION}")
  if os.path.exists(os.path.join(root, "manifest.json")):
    return root

  def write(tmp):
    manifest = {"version": POSTTRAIN_VERSION, "files": {}}
    for name, records in posttrain_sources().items():
      with open(os.path.join(tmp, f"{name}.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
      manifest["files"][name] = {"records": len(records), "format": POSTTRAIN_FORMATS[name]}
    return manifest

  return _publish(root, write)

"""`python -m phi4_jax.curate annotate` and `... train`: the quality classifier's two steps before a
run's classify step (curate/annotate.py, curate/classifier.py).

  python -m phi4_jax.curate annotate --input=GLOB | --sources=FILE.py:PRESET --judge=rule|G --out=DIR \\
      [--config.sample=10000] [--overwrite]
  python -m phi4_jax.curate train --annotations=DIR/annotations.jsonl --out=CLASSIFIER_DIR \\
      [--config.kind=ngram|embed] [--config.model=W --config.layer=L] [--config.label=educational_value]

G is synth/generator.py's spec (a workdir, an HF folder or http://host:port/v1,model=NAME); `rule`
is annotate.rule_judge. The classifier folder is what a run's --config.classify.classifier names.
"""

from __future__ import annotations

import json
import os
import sys

from phi4_jax import flags
from phi4_jax.curate import annotate as annotate_lib
from phi4_jax.curate import classifier, documents


def documents_of(input_glob: str, sources: str, cache: str) -> list[dict]:
  """Every document of the inputs as {"id": "<source>/<file name>:<record>", "text"} in run order."""
  docs = []
  for file in documents.files_of(documents.leaves_of(input_glob, sources)):
    for i, text in documents.texts(file, cache):
      if text is not None:
        docs.append({"id": f"{file.source}/{os.path.basename(file.path)}:{i}", "text": text})
  return docs


def annotate(argv: list[str]) -> dict:
  p = flags.Parser("python -m phi4_jax.curate annotate", __doc__)
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--input", default="", help="documents: comma-separated globs")
  which.add_argument("--sources", default="", metavar="FILE.py:PRESET", help="a stage config's data sources")
  p.add_argument("--judge", default="rule", help="rule, or a generator: a workdir, HF folder or http(s)://URL,model=NAME")
  p.add_argument("--out", required=True, help="the folder of annotations.jsonl")
  flags.add_overwrite_flag(p)
  flags.add_settings_flags(p, annotate_lib.FIELDS, group="config")
  args = p.parse_args(argv)
  settings = flags.settings(args, annotate_lib.FIELDS)
  annotate_lib.FIELDS.check(settings, "config")
  docs = documents_of(args.input, args.sources, os.path.join(args.out, "cache"))
  summary = annotate_lib.annotate(docs, args.judge, args.out, settings, args.overwrite)
  print(json.dumps(summary))
  return summary


def train(argv: list[str]) -> dict:
  p = flags.Parser("python -m phi4_jax.curate train", __doc__)
  p.add_argument("--annotations", required=True, help="annotations.jsonl (python -m phi4_jax.curate annotate)")
  p.add_argument("--out", required=True, help="the classifier's folder")
  flags.add_settings_flags(p, classifier.FIELDS, group="config")
  args = p.parse_args(argv)
  settings = flags.settings(args, classifier.FIELDS)
  classifier.FIELDS.check(settings, "config")
  return classifier.train(args.annotations, settings, args.out)


if __name__ == "__main__":
  try:
    {"annotate": annotate, "train": train}[sys.argv[1]](sys.argv[2:])
  except (ValueError, FileNotFoundError, KeyError, IndexError) as e:
    sys.exit(f"error: {e}")

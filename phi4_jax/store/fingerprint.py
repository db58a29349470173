"""What a resumable output was made from, recorded beside it, so that a rerun never mixes runs.

Every command that resumes into an existing output (PTS, plurality, judge, generate,
decontamination) first `claim`s it with a fingerprint of its model, input files and settings,
written to `<output>.fingerprint.json` on the first run. A rerun with the same fingerprint resumes;
one with another is refused with the fields that differ named, or, with `overwrite`, starts over
(the old outputs removed first). `refuse_input_as_output` stops a run whose output is one of its
inputs before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os

from phi4_jax.store import atomic

SUFFIX = ".fingerprint.json"


class FingerprintError(ValueError):
  """A rerun into an output made from another model, other inputs or other settings."""


def file_identity(path: str) -> dict:
  """{"path", "bytes", "sha256"} of a file's content (an edited input is another input)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return {"path": os.path.realpath(path), "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def records_identity(records: list) -> dict:
  """{"count", "sha256"} of records as JSON (questions or prompts, however they were read)."""
  text = json.dumps(records, sort_keys=True)
  return {"count": len(records), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def settings_identity(settings, ignored: tuple[str, ...] = ()) -> dict:
  """A tool's settings (a ConfigDict) as its fingerprint records them: every field but the
  `ignored` ones (concurrency and batching, which its outputs do not depend on)."""
  return {k: v for k, v in settings.to_dict().items() if k not in ignored}


def model_identity(path: str, step: int | None = None) -> dict:
  """A workdir at a step (the latest, resolved now, when none is given) or an HF folder (its config
  and the size of each weight file)."""
  from phi4_jax.store import checkpoint
  path = os.path.realpath(os.path.expanduser(path))
  if not os.path.exists(os.path.join(path, "checkpoints")):
    files = sorted(n for n in os.listdir(path) if n.endswith((".json", ".safetensors"))) if os.path.isdir(path) else []
    return {"hf_dir": path, "files": {n: os.path.getsize(os.path.join(path, n)) for n in files}}
  return {"workdir": path, "step": checkpoint.latest_step(path) if step is None else step}


def _differences(old, new, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    return [d for key in sorted(set(old) | set(new))
            for d in _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)]
  return [] if old == new else [f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"]


def claim(output: str, fingerprint: dict, made: list[str], overwrite: bool = False,
          flag: str = "--overwrite", folder: bool = False) -> None:
  """Records `fingerprint` for `output` (a file, or with folder=True a folder that holds it as
  `fingerprint.json`), or checks a rerun against the recorded one. `made`: the paths a run writes
  (logs, parts, the output itself), removed on overwrite. Raises FingerprintError naming what
  differs and `flag`."""
  path = os.path.join(output, "fingerprint.json") if folder else os.path.normpath(output) + SUFFIX
  fingerprint = json.loads(json.dumps(fingerprint))  # (tuples as lists, as read back)
  if os.path.exists(path) and not overwrite:
    with open(path, encoding="utf-8") as f:
      recorded = json.load(f)
    if recorded != fingerprint:
      raise FingerprintError(
          f"{output} was made from another run ({'; '.join(_differences(recorded, fingerprint)[:6])}); "
          f"give another output, or {flag} to start it over")
    return
  if overwrite:
    for made_path in made:
      atomic.remove(made_path)
  elif any(os.path.exists(p) for p in made):
    raise FingerprintError(f"{output}: outputs of a run that recorded no fingerprint are there "
                           f"({', '.join(p for p in made if os.path.exists(p))}); {flag} to start over")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic.write_json(path, fingerprint)


def refuse_input_as_output(output: str, inputs: dict[str, str]) -> None:
  """ValueError when `output` is (or, for a folder, holds) one of `inputs` ({flag: path})."""
  out = os.path.realpath(output)
  for flag, path in inputs.items():
    if not path:
      continue
    real = os.path.realpath(path)
    if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
      raise ValueError(f"the output {output} {'is' if real == out else 'holds'} the input {flag}={path}: "
                       "it would be overwritten")

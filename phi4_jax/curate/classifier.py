"""Quality (and topic) classifiers trained on annotations (annotate.py), in JAX with optax.

Two kinds of features:

  embed   the mean over a document's first max_tokens tokens of a frozen model's hidden states
          after `layer` decoder layers (0 = all), as FineWeb-Edu's classifier reads a frozen
          embedder: the model's params cut to those layers run with its final RMSNorm, so layer 0
          (or n_layers) is exactly model.forward's return_hidden states. A linear head (or, with
          `hidden`, one ReLU layer) reads them standardised by the training set's mean and std.
  ngram   a linear model on hashed word n-grams (1..ngram_n words of a document's first max_tokens
          words, lower-cased, crc32 into ngram_dims buckets, each valued log(1 + count)), those in
          fewer than min_count training documents left out (on a few thousand annotations, rare
          n-grams let the model learn each document by heart instead of the rule): CPU-cheap
          scoring; its weights are gathered per n-gram (the gradient a scatter-add).

A numeric label (educational_value, reasoning: the rubric's 0-5) is learnt as ordinal logistic
regression: one logistic output per threshold t = 1..5 for P(label >= t) (binary cross-entropy),
the score their sum, i.e. the expected label; a document is kept when its score rounds to the
threshold or more (FineWeb-Edu's rule: int_score = round(score) >= 3). (Squared error on the label
itself did worse on a hidden "contains one of these words" rule: a linear score cannot saturate as
the rule does.) A string label (topic) is learnt as classes (softmax cross-entropy; the score is
each class's probability). Annotations are held out by a hash of (seed, id); OUT/metrics.json
holds the held-out accuracy, precision, recall and F1 at each threshold 1..5 (round(score) >= t
against label >= t) or per class, also printed. OUT/params holds the params (orbax),
OUT/classifier.json the settings, classes and the frozen model's identity; `load(OUT).score(texts)`
scores in jitted batches.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import optax

from phi4_jax import fields
from phi4_jax.curate import topics
from phi4_jax.store import atomic, fingerprint, jsonl_log

FIELDS = fields.Group(
    kind=fields.Field("ngram", fields.choice(("embed", "ngram")),
                      "embed: a head on a frozen model's mean-pooled hidden states | ngram: hashed word n-grams"),
    label=fields.Field("educational_value", fields.string(),
                       "the annotation field learnt: 0-5 numbers as ordinal levels, strings (topic) as classes"),
    threshold=fields.Field(3, fields.number(), "kept: a score that rounds to this or more (FineWeb-Edu: 3)"),
    model=fields.Field("", fields.string(), "kind=embed: the frozen model, a workdir or an HF folder"),
    layer=fields.Field(0, fields.integer(0),
                       "kind=embed: hidden states after this many decoder layers (0 = all of them)"),
    max_tokens=fields.Field(512, fields.integer(1), "a document's first tokens (embed) or words (ngram) read"),
    ngram_dims=fields.Field(2 ** 18, fields.integer(1), "kind=ngram: hash buckets of the n-grams"),
    ngram_n=fields.Field(2, fields.integer(1, 4), "kind=ngram: n-grams of 1 to this many words"),
    min_count=fields.Field(5, fields.integer(1), "kind=ngram: n-grams in fewer training documents are ignored"),
    hidden=fields.Field(0, fields.integer(0), "kind=embed: the head's hidden ReLU width (0 = a linear head)"),
    epochs=fields.Field(50, fields.integer(1), "passes over the training annotations"),
    learning_rate=fields.Field(0.1, fields.number(0, low_open=True), "Adam's learning rate"),
    batch_size=fields.Field(32, fields.integer(1), "annotations per training step"),
    feature_batch=fields.Field(32, fields.integer(1), "documents per frozen-model pass or scoring step"),
    heldout=fields.Field(0.2, fields.number(0, 1, low_open=True, high_open=True),
                         "share of the annotations held out (by a hash of the id) for the metrics"),
    seed=fields.Field(0, fields.integer(0), "chooses the held-out set, the initialisation and the batch order"),
)
THRESHOLDS = (1, 2, 3, 4, 5)
_WORD = re.compile(r"\w+")


def _bucket(n: int, low: int = 16) -> int:
  """n rounded up to a power of two (at least `low`): few shapes, few compilations."""
  return max(low, 1 << max(0, n - 1).bit_length())


class NgramFeatures:
  """{"idx" [N,K] int32, "val" [N,K] float32}: each document's hashed n-grams and their weights."""

  def __init__(self, settings):
    self.n, self.dims, self.max_words = settings.ngram_n, settings.ngram_dims, settings.max_tokens

  def counts(self, text: str) -> dict[int, float]:
    words = _WORD.findall(text.lower())[:self.max_words]
    grams = Counter(zlib.crc32(" ".join(words[i:i + k]).encode("utf-8")) % self.dims
                    for k in range(1, self.n + 1) for i in range(len(words) - k + 1))
    return {g: float(np.log1p(c)) for g, c in sorted(grams.items())}

  def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
    rows = [self.counts(t) for t in texts]
    width = _bucket(max((len(r) for r in rows), default=1))
    idx, val = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
      idx[i, :len(row)], val[i, :len(row)] = list(row), list(row.values())
    return {"idx": idx, "val": val}


def _pooled(params, tokens, mask, cfg):
  from phi4_jax import model
  hidden = model.forward(params, tokens, cfg, return_hidden=True).astype(jnp.float32)
  return (hidden * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)


_pooled_jit = jax.jit(_pooled, static_argnames=("cfg",))


class EmbedFeatures:
  """{"x" [N,D] float32}: mean-pooled hidden states after `layer` layers of a frozen model."""

  def __init__(self, cfg, params, settings):
    from phi4_jax.tokenizer import Phi4Tokenizer
    layer = settings.layer or cfg.n_layers
    if layer > cfg.n_layers:
      raise ValueError(f"classifier.layer: the model has {cfg.n_layers} layers, got {settings.layer}")
    self.cfg = cfg.replace(n_layers=layer)
    self.params = {**params, "layers": jax.tree.map(lambda a: a[:layer], params["layers"])}
    self.max_tokens, self.batch = min(settings.max_tokens, cfg.max_seq_len), settings.feature_batch
    self.tokenizer = Phi4Tokenizer()

  def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
    # (a token is rarely over 16 characters: the text is cut there before it is encoded)
    ids = [t[:self.max_tokens] for t in self.tokenizer.encode_ordinary_batch(
        [text[:16 * self.max_tokens] for text in texts])]
    out = [np.zeros((0, self.cfg.d_model), np.float32)]
    for start in range(0, len(ids), self.batch):
      chunk = ids[start:start + self.batch]
      width = min(_bucket(max(len(t) for t in chunk)), _bucket(self.max_tokens))
      tokens, mask = np.zeros((self.batch, width), np.int32), np.zeros((self.batch, width), np.float32)
      for i, t in enumerate(chunk):
        tokens[i, :len(t)], mask[i, :len(t)] = t, 1.0
      out.append(np.asarray(_pooled_jit(self.params, tokens, mask, self.cfg))[:len(chunk)])
    return {"x": np.concatenate(out)}


def make_features(settings, model_identity: dict | None = None):
  """The featurizer `settings` name (kind=embed loads its model; with `model_identity`, the model
  recorded at training, from its absolute path, refused if the folder now holds another)."""
  if settings.kind == "ngram":
    return NgramFeatures(settings)
  if not settings.model:
    raise ValueError("classifier.model: kind=embed needs the frozen model (a workdir or an HF folder)")
  from phi4_jax import inference
  path = settings.model if model_identity is None else model_identity.get("hf_dir") or model_identity["workdir"]
  identity = fingerprint.model_identity(path, (model_identity or {}).get("step"))
  if model_identity is not None and json.loads(json.dumps(identity)) != model_identity:
    raise ValueError(f"classifier.model: {path} is not the model the classifier was trained on "
                     f"({model_identity} -> {identity})")
  cfg, params = inference.load(path, identity.get("step"))
  features = EmbedFeatures(cfg, params, settings)
  features.identity = identity
  return features


def outputs(params: dict, feats: dict) -> jax.Array:
  """[B, outputs]: the logit of each threshold (label >= t) or of each class."""
  head = params["head"]
  if "idx" in feats:
    val = feats["val"] * jnp.take(params["mask"], feats["idx"])
    return (jnp.take(head["w"], feats["idx"], axis=0) * val[..., None]).sum(1) + head["b"]
  x = (feats["x"] - params["mean"]) / params["std"]
  if "w1" in head:
    x = jax.nn.relu(x @ head["w1"] + head["b1"])
  return x @ head["w"] + head["b"]


_outputs_jit = jax.jit(outputs)


def levels(y) -> jax.Array:
  """[N, 5]: label >= t for t = 1..5, as floats."""
  return (y[:, None] >= jnp.asarray(THRESHOLDS, jnp.float32)).astype(jnp.float32)


def _loss(out: jax.Array, y: jax.Array, classes: int) -> jax.Array:
  if classes:
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
  return optax.sigmoid_binary_cross_entropy(out, levels(y)).mean()


def init_params(settings, feats: dict, y: np.ndarray, classes: int) -> dict:
  """The head, its bias at the training set's log-odds, and the constants: for ngram the mask of
  n-grams in min_count or more training documents, for embed the standardisation."""
  width = classes or len(THRESHOLDS)
  share = np.bincount(y, minlength=classes) / len(y) if classes else np.asarray(levels(y)).mean(0)
  share = np.clip(share, 1e-3, 1 - 1e-3)
  bias = jnp.asarray(np.log(share) if classes else np.log(share / (1 - share)), jnp.float32)
  if "idx" in feats:
    # (a document lists each of its buckets once: the count of a bucket is its documents)
    mask = np.bincount(feats["idx"][feats["val"] > 0], minlength=settings.ngram_dims) >= settings.min_count
    return {"head": {"w": jnp.zeros((settings.ngram_dims, width)), "b": bias},
            "mask": jnp.asarray(mask, jnp.float32)}
  x = feats["x"]
  consts = {"mean": jnp.asarray(x.mean(0)), "std": jnp.asarray(x.std(0) + 1e-6)}
  if not settings.hidden:
    return {"head": {"w": jnp.zeros((x.shape[1], width)), "b": bias}, **consts}
  k1, k2 = jax.random.split(jax.random.key(settings.seed))
  return {"head": {"w1": jax.random.normal(k1, (x.shape[1], settings.hidden)) / np.sqrt(x.shape[1]),
                   "b1": jnp.zeros(settings.hidden),
                   "w": jax.random.normal(k2, (settings.hidden, width)) / np.sqrt(settings.hidden),
                   "b": bias}, **consts}


def fit(params: dict, feats: dict, y: np.ndarray, settings, classes: int) -> dict:
  """Adam on the head for `epochs` shuffled passes (the last batch filled from the pass's start)."""
  optimizer = optax.adam(settings.learning_rate)

  @jax.jit
  def step(head, state, consts, batch, target):
    loss, grads = jax.value_and_grad(lambda h: _loss(outputs({**consts, "head": h}, batch), target, classes))(head)
    updates, state = optimizer.update(grads, state, head)
    return optax.apply_updates(head, updates), state, loss

  head, consts = params["head"], {k: v for k, v in params.items() if k != "head"}
  state, rng, n = optimizer.init(head), np.random.default_rng(settings.seed), len(y)
  size = min(settings.batch_size, n)
  for _ in range(settings.epochs):
    order = rng.permutation(n)
    order = np.concatenate([order, order[:size - n % size]]) if n % size else order
    for start in range(0, len(order), size):
      rows = order[start:start + size]
      head, state, _ = step(head, state, consts, {k: v[rows] for k, v in feats.items()}, y[rows])
  return {**consts, "head": head}


def passes(score: np.ndarray, threshold: float) -> np.ndarray:
  """round(score) >= threshold (halves rounded up)."""
  return np.floor(np.asarray(score) + 0.5) >= threshold


def binary(predicted: np.ndarray, actual: np.ndarray) -> dict:
  """Accuracy, precision, recall and F1 of boolean predictions (None where undefined: 0 / 0)."""
  tp, fp = int(np.sum(predicted & actual)), int(np.sum(predicted & ~actual))
  fn = int(np.sum(~predicted & actual))
  precision = tp / (tp + fp) if tp + fp else None
  recall = tp / (tp + fn) if tp + fn else None
  f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
  return {"accuracy": float(np.mean(predicted == actual)), "precision": precision, "recall": recall, "f1": f1,
          "positives": int(actual.sum()), "predicted": int(predicted.sum())}


def evaluate(score: np.ndarray, y: np.ndarray, classes: list[str] | None, threshold: float) -> dict:
  """Held-out metrics of scores (Classifier.score's): per threshold 1..5 (and at `threshold`) for a
  numeric label, per class for classes."""
  if classes:
    pred = score.argmax(1)
    per_class = {c: binary(pred == k, y == k) for k, c in enumerate(classes)}
    f1s = [m["f1"] or 0.0 for m in per_class.values()]
    return {"task": "classes", "heldout": len(y), "accuracy": float(np.mean(pred == y)),
            "macro_f1": float(np.mean(f1s)), "classes": per_class}
  return {"task": "levels", "heldout": len(y), "mse": float(np.mean((score - y) ** 2)),
          "thresholds": {str(t): binary(passes(score, t), y >= t) for t in THRESHOLDS},
          "at_threshold": {"threshold": threshold, **binary(passes(score, threshold), y >= threshold)}}


def read_annotations(annotations, label: str) -> tuple[list[dict], np.ndarray, list[str] | None]:
  """(records, labels, classes): a JSONL path or a list of records, each with an id, a text and the
  label; numbers give float labels (classes None), strings class indices of the sorted classes."""
  records = annotations if isinstance(annotations, list) else [r for _, r in jsonl_log.objects(annotations)]
  for n, r in enumerate(records):
    if not isinstance(r.get("id"), str) or not isinstance(r.get("text"), str) or label not in r:
      raise ValueError(f"annotation {n}: needs a string `id` and `text` and the label {label!r}")
  values = [r[label] for r in records]
  if all(isinstance(v, str) for v in values):
    classes = sorted(set(values))
    return records, np.array([classes.index(v) for v in values], np.int32), classes
  bad = next((r for r, v in zip(records, values) if isinstance(v, bool) or not isinstance(v, (int, float))), None)
  if bad is not None:
    raise ValueError(f"annotation {bad['id']!r}: label {label}={bad[label]!r} is neither a number nor, "
                     "like every other, a string")
  return records, np.array(values, np.float32), None


def split(records: list[dict], heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, held-out rows): a record is held out when the draw of its id is under `heldout`."""
  held = np.array([topics.draw(f"heldout\0{r['id']}", seed) < heldout for r in records], dtype=bool)
  if held.all() or not held.any():
    raise ValueError(f"classifier.heldout={heldout}: {len(records)} annotations leave no "
                     f"{'training' if held.all() else 'held-out'} set")
  return np.flatnonzero(~held), np.flatnonzero(held)


def train(annotations, settings, out: str, progress: bool = True) -> dict:
  """Trains the classifier `settings` describe on `annotations` (a path or records) into OUT;
  returns (and saves, and with `progress` prints) its held-out metrics."""
  FIELDS.check(settings, "classifier", complete=True)
  records, y, classes = read_annotations(annotations, settings.label)
  rows, held = split(records, settings.heldout, settings.seed)
  features = make_features(settings)
  feats = features([r["text"] for r in records])
  pick = lambda ix: {k: v[ix] for k, v in feats.items()}
  params = init_params(settings, pick(rows), y[rows], len(classes or ()))
  params = fit(params, pick(rows), y[rows], settings, len(classes or ()))
  classifier = Classifier(settings, params, classes, features)
  metrics = {"train": len(rows), **evaluate(classifier.scores(classifier.outputs(pick(held))), y[held], classes,
                                            settings.threshold)}
  config = {"kind": settings.kind, "label": settings.label, "threshold": settings.threshold, "classes": classes,
            "settings": settings.to_dict(), "model": getattr(features, "identity", None)}
  save(out, params, config, metrics)
  if progress:
    print(report(config, metrics))
  return metrics


def report(config: dict, metrics: dict) -> str:
  """The metrics as a table."""
  head = (f"classifier: {config['kind']} on {config['label']}, {metrics['train']} trained, "
          f"{metrics['heldout']} held out")
  fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"
  if metrics["task"] == "classes":
    lines = [f"{c:>12} " + " ".join(fmt(m[k]) for k in ("precision", "recall", "f1"))
             for c, m in metrics["classes"].items()]
    return "\n".join([head, f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}",
                      "       class   prec    rec     f1", *lines])
  lines = [f"  >= {t}     " + " ".join(fmt(m[k]) for k in ("accuracy", "precision", "recall", "f1"))
           for t, m in metrics["thresholds"].items()]
  return "\n".join([head, f"mse {metrics['mse']:.3f}", "threshold    acc   prec    rec     f1", *lines])


def paths(out: str) -> dict[str, str]:
  return {"params": os.path.abspath(os.path.join(out, "params")), "config": os.path.join(out, "classifier.json"),
          "metrics": os.path.join(out, "metrics.json")}


def save(out: str, params: dict, config: dict, metrics: dict) -> None:
  """OUT/params (orbax), OUT/metrics.json, then OUT/classifier.json (written last: a classifier
  whose save was cut short has none)."""
  import orbax.checkpoint as ocp
  p = paths(out)
  os.makedirs(out, exist_ok=True)
  for path in (p["config"], p["params"]):
    atomic.remove(path)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(p["params"], params)
    checkpointer.wait_until_finished()
  atomic.write_json(p["metrics"], metrics)
  atomic.write_json(p["config"], config)


class Classifier:
  """A trained classifier: score(texts) -> [N] expected labels, or [N, classes] probabilities."""

  def __init__(self, settings, params: dict, classes: list[str] | None, features):
    self.settings, self.params, self.classes, self.features = settings, params, classes, features

  def outputs(self, feats: dict) -> np.ndarray:
    """The head's outputs on featurized documents, feature_batch rows per jitted call."""
    size, n = self.settings.feature_batch, len(next(iter(feats.values())))
    out = [np.zeros((0, len(self.classes or THRESHOLDS)), np.float32)]
    for start in range(0, n, size):
      chunk = {k: v[start:start + size] for k, v in feats.items()}
      rows = len(next(iter(chunk.values())))
      padded = {k: np.pad(v, [(0, size - rows)] + [(0, 0)] * (v.ndim - 1)) for k, v in chunk.items()}
      out.append(np.asarray(_outputs_jit(self.params, padded))[:rows])
    return np.concatenate(out)

  def scores(self, out: np.ndarray) -> np.ndarray:
    """Outputs to scores: the sum of P(label >= t) over t = 1..5, or each class's probability."""
    if self.classes:
      return np.asarray(jax.nn.softmax(out, axis=1))
    return np.asarray(jax.nn.sigmoid(out)).sum(1)

  def score(self, texts: list[str]) -> np.ndarray:
    size, out = self.settings.feature_batch, []
    for start in range(0, len(texts), size):
      out.append(self.outputs(self.features(list(texts[start:start + size]))))
    return self.scores(np.concatenate(out) if out else np.zeros((0, len(self.classes or THRESHOLDS)), np.float32))

  def predict(self, texts: list[str]) -> np.ndarray:
    """Kept (round(score) >= threshold) for a numeric label; the most probable class's name for classes."""
    scores = self.score(texts)
    if self.classes:
      return np.array(self.classes)[scores.argmax(1)] if len(scores) else np.array([], dtype=str)
    return passes(scores, self.settings.threshold)


def load(out: str) -> Classifier:
  """The classifier trained into OUT (its frozen model loaded for kind=embed)."""
  import orbax.checkpoint as ocp
  p = paths(out)
  if not os.path.exists(p["config"]):
    raise FileNotFoundError(f"{out}: no classifier.json (not a trained classifier, or its save was cut short)")
  with open(p["config"], encoding="utf-8") as f:
    config = json.load(f)
  FIELDS.check(config["settings"], f"{p['config']}: settings")
  settings = FIELDS.config(**config["settings"])
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(p["params"])
  params = jax.tree.map(jnp.asarray, params)
  return Classifier(settings, params, config["classes"], make_features(settings, config["model"]))

"""DIR/scores.png: the quality classifier's score distribution per source, the threshold marked."""

from __future__ import annotations

import collections

import numpy as np


def score_plot(files, measured: list[dict], threshold: float, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from phi4_jax.store import atomic
  by_source = collections.defaultdict(list)
  for file, m in zip(files, measured):
    scores = m["score"][np.isfinite(m["score"])]
    by_source[file.source].append(scores)
  fig, ax = plt.subplots(figsize=(7, 4))
  for source, parts in by_source.items():
    scores = np.concatenate(parts) if parts else np.zeros(0)
    if scores.size:
      ax.hist(scores, bins=40, alpha=0.6, label=f"{source} ({scores.size} documents)")
  ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
  ax.set_xlabel("classifier score")
  ax.set_ylabel("documents")
  ax.set_title("Quality scores of the documents that passed the filters")
  ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  with atomic.replacing(path) as tmp:
    fig.savefig(tmp, format="png", dpi=100)
  plt.close(fig)

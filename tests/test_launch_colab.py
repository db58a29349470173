"""experiments/colab.ipynb: valid, uses only existing public API, and runs (on a tiny preset)."""

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys

from phi4_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_cells():
  with open(os.path.join(REPO, "experiments", "colab.ipynb"), encoding="utf-8") as f:
    nb = json.load(f)
  assert nb["nbformat"] == 4
  cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  # IPython's shell escapes are not Python: `!cmd` and `%magic` lines become `pass`.
  return ["\n".join(line[:len(line) - len(line.lstrip())] + "pass"
                    if line.strip().startswith(("!", "%")) else line
                    for line in cell.splitlines()) for cell in cells]


def test_notebook_cells_compile_and_name_real_functions():
  trees = [ast.parse(cell) for cell in _code_cells()]
  imported = {}
  for tree in trees:
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module.startswith("phi4_jax"):
        module = importlib.import_module(node.module)
        for alias in node.names:
          assert hasattr(module, alias.name) or importlib.util.find_spec(
              f"{node.module}.{alias.name}"), f"{node.module}.{alias.name}"
          imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
  used = {f"{imported[n.value.id]}.{n.attr}" for tree in trees for n in ast.walk(tree)
          if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in imported}
  for dotted in used:
    module, _, attr = dotted.rpartition(".")
    assert hasattr(importlib.import_module(module), attr), dotted
  assert {"phi4_jax.inference.generate", "phi4_jax.store.workdir.restore_params",
          "phi4_jax.recipe.runner.run"} <= used


def run_notebook(workdir, data_cache, preset: str = "colab") -> subprocess.CompletedProcess:
  """Every code cell but the install one, in order, as one script, on `preset` in `workdir`: the
  notebook's own stage list. tests/test_recipe.py calls it on the colab recipe's workdir once the
  recipe ran there, so the training cell resumes seven finished stages and the rest plots, reports
  and answers from them (a tiny-budget run of those stages would give PTS no pivots to find)."""
  settings = (("PRESET = ", f"PRESET = {preset!r}"), ("WORKDIR = ", "WORKDIR = os.environ['NOTEBOOK_WORKDIR']"))
  script = []
  for cell in _code_cells()[1:]:
    for line in cell.splitlines():
      script.append(next((new for prefix, new in settings if line.startswith(prefix)), line))
  assert sum(line.startswith(new) for line in script for _, new in settings) == len(settings)
  preamble = ["import os  # (the skipped install cell's)", "import matplotlib", "matplotlib.use('Agg')"]
  path = os.path.join(workdir, "..", "notebook.py")
  with open(path, "w") as f:
    f.write("\n".join(preamble + script))
  env = {**os.environ, "NOTEBOOK_WORKDIR": str(workdir), "PHI4_JAX_CACHE": data_cache, "XLA_FLAGS": "",
         "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, path], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def check_notebook_output(out: subprocess.CompletedProcess, stages: tuple[str, ...]) -> None:
  """What the notebook's cells print on a finished recipe: every stage's plan, the data stages'
  summaries, and one chat answer, cut at <|im_end|>."""
  assert out.returncode == 0, out.stderr[-4000:]
  for stage in stages:
    assert f"{stage}: " in out.stdout, (stage, out.stdout)
  assert "pts: make pairs from" in out.stdout and "pts {'stage': 'pts'" in out.stdout
  question = "Are there more odd or even numbers in this list: 7 2 9 4 1 3 8?\n-> "
  answer = out.stdout.rsplit(question, 1)[1]
  assert "<|im_end|>" not in answer and "<|im_start|>" not in answer

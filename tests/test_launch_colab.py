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


# The notebook's settings, swapped for a tiny run: (line prefix in its cells, replacement line).
_TINY = (
    ("PRESET = ", 'PRESET = "test"'),
    ("WORKDIR = ", "WORKDIR = os.environ['NOTEBOOK_WORKDIR']"),
    ("OVERRIDES = ", 'OVERRIDES = {"pretrain.steps": 3, "pretrain.seq_len": 128, "pretrain.log_every": 1, '
     '"pretrain.tensorboard": False, "midtrain.steps": 2, "midtrain.seq_len": 256, '
     '"midtrain.log_every": 1, "midtrain.tensorboard": False, "sft.steps": 2, "sft.log_every": 1, '
     '"sft.tensorboard": False, "dpo.steps": 2, "dpo.log_every": 1, "dpo.tensorboard": False}'),
)


def test_notebook_runs_end_to_end_on_a_tiny_preset(tmp_path, data_cache):
  """Every code cell but the install one, in order, as one script: train, plot, sample."""
  script = []
  for cell in _code_cells()[1:]:
    for line in cell.splitlines():
      script.append(next((new for prefix, new in _TINY if line.startswith(prefix)), line))
  assert sum(line.startswith(new) for line in script for _, new in _TINY) == len(_TINY)
  preamble = ["import os  # (the skipped install cell's)", "import matplotlib", "matplotlib.use('Agg')"]
  (tmp_path / "notebook.py").write_text("\n".join(preamble + script))
  env = {**os.environ, "NOTEBOOK_WORKDIR": str(tmp_path / "run"), "PHI4_JAX_CACHE": data_cache,
         "XLA_FLAGS": "", "PYTHONPATH": REPO}
  out = subprocess.run([sys.executable, str(tmp_path / "notebook.py")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  assert [r["step"] for r in read_metrics(tmp_path / "run" / "midtrain")] == [1, 2]
  prompt = "def fibonacci(n):"  # the sample cell prints the prompt and its continuation last
  assert prompt in out.stdout and out.stdout.rsplit(prompt, 1)[1].strip()

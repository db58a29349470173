"""experiments/colab.ipynb: a valid notebook whose code compiles and uses only existing public API."""

import ast
import importlib
import importlib.util
import json
import os

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
  assert {"phi4_jax.model.forward", "phi4_jax.train.checkpoint.restore_params",
          "phi4_jax.train.recipe.run"} <= used

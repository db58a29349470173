"""phi4_jax.store: the one atomic write; and the old module names that alias moved modules."""

import os
import socket
import subprocess
import sys

import pytest

from phi4_jax.store import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_temporary_names_carry_host_process_and_thread(tmp_path):
  name = atomic.temporary(tmp_path / "summary.json")
  assert name.startswith(str(tmp_path / "summary.json.tmp-"))
  assert f"-{socket.gethostname()}-{os.getpid()}-" in name


def test_a_write_appears_whole_and_a_failed_one_leaves_the_old_file(tmp_path):
  target = tmp_path / "table.json"
  atomic.write_json(target, {"a": 1})
  assert target.read_text() == '{\n "a": 1\n}'
  with pytest.raises(RuntimeError, match="disk gone"):
    with atomic.replacing(target) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("disk gone")
  assert target.read_text() == '{\n "a": 1\n}'  # untouched
  assert os.listdir(tmp_path) == ["table.json"]  # the temporary removed


def test_a_folder_replaces_a_missing_path_and_never_a_full_one(tmp_path):
  target = tmp_path / "corpus"
  with atomic.replacing(target) as tmp:
    os.makedirs(tmp)
    open(os.path.join(tmp, "a.jsonl"), "w").close()
  assert os.listdir(target) == ["a.jsonl"]
  with pytest.raises(OSError):  # another process built it first: its folder is kept
    with atomic.replacing(target) as tmp:
      os.makedirs(tmp)
      open(os.path.join(tmp, "b.jsonl"), "w").close()
  assert os.listdir(target) == ["a.jsonl"] and os.listdir(tmp_path) == ["corpus"]


def test_old_module_names_are_the_moved_modules_with_a_deprecation_warning():
  code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
          "from phi4_jax.store import checkpoint, jsonl_log, workdir\n"
          "for old in ('phi4_jax.train.workdir', 'phi4_jax.train.checkpoint', 'phi4_jax.posttrain.jsonl_log',\n"
          "            'phi4_jax.train.recipe', 'phi4_jax.train.report'):\n"
          "  try:\n    __import__(old)\n  except DeprecationWarning as e:\n    print(e)\n"
          "warnings.simplefilter('ignore')\n"
          "from phi4_jax.train import workdir as w, checkpoint as c, recipe as r, report\n"
          "from phi4_jax.posttrain import jsonl_log as j\nfrom phi4_jax import recipe\n"
          "print(w is workdir, c is checkpoint, j is jsonl_log, r is recipe.runner, report is recipe.report)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
  assert out.stdout.splitlines() == ["phi4_jax.train.workdir moved to phi4_jax.store.workdir",
                                     "phi4_jax.train.checkpoint moved to phi4_jax.store.checkpoint",
                                     "phi4_jax.posttrain.jsonl_log moved to phi4_jax.store.jsonl_log",
                                     "phi4_jax.train.recipe moved to phi4_jax.recipe.runner",
                                     "phi4_jax.train.report moved to phi4_jax.recipe.report",
                                     "True True True True True"]


def test_loading_a_workdir_imports_nothing_above_the_store():
  """inference.load reads a workdir or an HF folder: training, data and grain stay out (tensorstore
  comes with orbax itself)."""
  code = ("import sys\nfrom phi4_jax import inference\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grain' or "
          "m.startswith(('phi4_jax.train', 'phi4_jax.data', 'phi4_jax.posttrain', 'phi4_jax.eval'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"

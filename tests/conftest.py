"""Test-wide setup before jax is imported: 8 fake CPU devices (for sharding tests), and one XLA
compilation cache for the session, its subprocesses included (the same train steps are compiled
by many tests and by every stage a subprocess runs); it starts empty and is removed at exit."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="phi4_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
  """A fresh cache directory holding the embedded data corpus, built once per test session."""
  from phi4_jax.data import corpus
  path = str(tmp_path_factory.mktemp("phi4_jax_cache"))
  corpus.build(path)
  return path

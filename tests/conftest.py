"""Test-wide setup: 8 fake CPU devices (for sharding tests) before jax is imported."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
  """A fresh cache directory holding the embedded data corpus, built once per test session."""
  from phi4_jax.data import corpus
  path = str(tmp_path_factory.mktemp("phi4_jax_cache"))
  corpus.build(path)
  return path

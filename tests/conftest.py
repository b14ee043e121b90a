"""Test-wide set-up: 8 simulated CPU devices, float32 matmuls at full precision; the sampling
tests' shared fixtures; the tiny Hugging Face XLNet checkpoint; one on-disk cache of compiled
programs for the whole session."""
import atexit
import os
import shutil
import tempfile


def _share_compiled_programs_on_disk():
  """Points JAX's persistent compilation cache at a directory of this test session.

  The first process of the session (pytest itself, before it starts its xdist workers) creates the
  directory and removes it at exit; the workers and every subprocess a test starts (train.py,
  sample.py, the evals, the main job) inherit it through the environment. A program compiled once,
  in any of them, is then loaded instead of compiled again: by the other worker, by the next module
  after `jax.clear_caches()`, and by each CLI run. A fresh directory per session, so a run never
  loads another run's programs; an unreadable entry is compiled again (JAX warns and goes on).
  """
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  directory = tempfile.mkdtemp(prefix="asarm_jax_tests_compiled_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache every program
  atexit.register(shutil.rmtree, directory, ignore_errors=True)


_share_compiled_programs_on_disk()
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment set-up above)

jax.config.update("jax_default_matmul_precision", "highest")


import gc  # noqa: E402

import pytest  # noqa: E402

import _sampling_testlib as lib  # noqa: E402  (after the precision set-up: it computes its cases)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Frees each module's compiled programs and arrays, so one long session does not accumulate them."""
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="module")
def model():
  """The sampling tests' tiny model (`asarm_jax.exact_laws.tiny_model()`): (cfg, params). Modules
  that test another model define their own `model`."""
  return lib.tiny_model()


@pytest.fixture(scope="module")
def ragged():
  """lib.BATCH ragged rows (`lib.ragged_batch`): (tokens, ranks, num_prompt)."""
  return lib.ragged_batch(lib.BATCH)


@pytest.fixture(scope="session")
def hf(tmp_path_factory):
  """The tiny Hugging Face XLNet checkpoint in both directory layouts
  (`hf_xlnet_helpers.build_hf_xlnet`), built once per session: tests only read it."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  import hf_xlnet_helpers  # pylint: disable=import-outside-toplevel (torch: only where needed)
  return hf_xlnet_helpers.build_hf_xlnet(tmp_path_factory.mktemp("hf_xlnet"))

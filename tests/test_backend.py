"""The backend-aware lowering choices: both branches run on the CPU and give the same numbers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import backend, masks, processors, sampling, train_lib
from asarm_jax.exact_laws import tiny_model
from asarm_jax.model import ASARM, cast_for_inference

BRANCHES = {"cpu": backend.CPU, "accelerator": backend.ACCELERATOR}
VOCAB = 200  # above the cumulative sum's block, so its blocked form is really used


def test_backend_names_map_to_choices():
  assert backend.for_backend("cpu") is backend.CPU
  for name in ("gpu", "cuda", "rocm", "tpu"):
    assert backend.for_backend(name) is backend.ACCELERATOR
  assert backend.current() is backend.CPU  # the tests run on the CPU
  with backend.use(backend.ACCELERATOR):
    assert backend.current() is backend.ACCELERATOR
  assert backend.current() is backend.CPU
  with pytest.raises(TypeError, match="backend.Choices"):
    with backend.use("gpu"):
      pass


def test_cumulative_sum_is_the_same_in_both_branches():
  x = jax.random.uniform(jax.random.key(0), (3, 5, 1000))  # [..., V], V not a multiple of 64
  results = {}
  for name, choices in BRANCHES.items():
    with backend.use(choices):
      results[name] = np.asarray(processors.cumulative_sum(x))
  np.testing.assert_allclose(results["cpu"], results["accelerator"], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(results["accelerator"], np.cumsum(np.asarray(x), -1), rtol=1e-5)


@pytest.fixture(scope="module")
def model():
  return tiny_model(seed=3, vocab_size=VOCAB)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_is_the_same_in_both_branches(model, dtype):
  cfg, params = cast_for_inference(*model, dtype)
  tokens = jnp.asarray(np.arange(12).reshape(2, 6) % (VOCAB - 1), jnp.int32)  # [B, N]
  ranks = jnp.asarray(masks.left_to_right_ranks(2, 6))
  full = {}
  for name, choices in BRANCHES.items():
    with backend.use(choices):
      full[name] = np.asarray(ASARM(cfg).apply({"params": params}, tokens, ranks, 2))
  tolerance = 1e-5 if dtype == "float32" else 2e-2
  np.testing.assert_allclose(full["cpu"], full["accelerator"], rtol=tolerance, atol=tolerance)


def test_cached_forward_is_the_same_in_both_branches(model):
  """On the CPU the cache holds the LM head transposed; elsewhere the head reads the embedding."""
  cfg, params = model
  module = ASARM(cfg)
  tokens = jnp.asarray(np.arange(12).reshape(2, 6) % (VOCAB - 1), jnp.int32)  # [B, N]
  ranks = masks.left_to_right_ranks(2, 6)
  content_mask, query_mask = masks.density_masks(ranks, 2)  # [B, N, N] each
  positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))  # [B, N]
  queries = positions[:, 2:4]  # [B, Q]
  logits = {}
  for name, choices in BRANCHES.items():
    with backend.use(choices):
      cache = module.apply({"params": params}, 2, 6, query_rows=2, method=ASARM.init_cache)
      assert (cache.output_weight is not None) == (name == "cpu")
      logits[name], _ = module.apply({"params": params}, cache, tokens, positions, content_mask,
                                     queries, query_mask[:, 2:4], method=ASARM.extend)
  full = module.apply({"params": params}, tokens, ranks, 2)[:, 2:4]  # [B, Q, V]
  np.testing.assert_allclose(logits["cpu"], logits["accelerator"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits["accelerator"], full, rtol=1e-4, atol=1e-4)


def test_sampler_keeps_its_choices_and_samples_alike(model):
  cfg, params = model
  tokens = np.zeros((3, 6), np.int32)
  ranks = masks.left_to_right_ranks(3, 6)
  with backend.use(backend.ACCELERATOR):
    on_accelerator = sampling.Sampler.create(cfg, method="auto", batch_shape=(32, 512))
    assert on_accelerator.method == "assd_fused"  # no batch cap off the CPU
  on_cpu = sampling.Sampler.create(cfg, method="assd_fused")
  assert sampling.Sampler.create(cfg, method="auto", batch_shape=(32, 512)).method == "sequential"
  assert on_accelerator.choices is backend.ACCELERATOR and on_cpu.choices is backend.CPU
  assert on_accelerator != on_cpu  # so each compiles its own program
  assert dataclasses.replace(on_cpu, choices=backend.ACCELERATOR) == on_accelerator
  outs = [s(params, tokens, ranks, 1, jax.random.key(5)) for s in (on_cpu, on_accelerator)]
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_array_equal(outs[0].nfe, outs[1].nfe)


def test_peak_counts_processes_where_devices_share_a_host(monkeypatch, model):
  monkeypatch.setattr(train_lib.metrics_lib, "measure_matmul_peak", lambda dtype: 10.0)
  cfg, _ = model
  assert train_lib.peak_flops(cfg) == 10.0 * jax.process_count()
  with backend.use(backend.ACCELERATOR):
    assert train_lib.peak_flops(cfg) == 10.0 * jax.device_count()

"""The cached samplers draw the same samples as the uncached ones, and the uncached ones stay lib.

The cached forward equals the full one up to float rounding (test_cache.py), and both use the same
keys in the same schedule, so with the same key the samples are identical unless rounding flips a
draw or an acceptance test. For the ragged batches below (prompt lengths 0..5, padding via
num_valid) none does; the laws of both are also checked by enumeration (test_sampling_exact.py runs
the cached samplers, the default; the uncached ones are checked here).
"""
import zlib

import jax
import numpy as np
import pytest

from asarm_jax import sampling
import _sampling_testlib as lib

@pytest.fixture(scope="module")
def ragged():
  """lib.BATCH ragged rows with padding in a third of them (see lib.padded_ragged_batch); replaces
  conftest's `ragged` here."""
  return lib.padded_ragged_batch(lib.BATCH, seed=1)


CONFIGS = {
    "sequential-t1": dict(method="sequential"),
    "sequential-greedy": dict(method="sequential", temperature=0.0),
    "assd_k3-t1": dict(method="assd", draft_len=3),
    "assd_k3-greedy": dict(method="assd", draft_len=3, temperature=0.0),
    "assd_k8-t0.7_topp0.8": dict(method="assd", draft_len=8, temperature=0.7, top_p=0.8),
    "fused_k3-t1": dict(method="assd_fused", draft_len=3),
    "fused_k3-greedy": dict(method="assd_fused", draft_len=3, temperature=0.0),
    "fused_k8-t1": dict(method="assd_fused", draft_len=8),
    "fused_k8-t0.7_topp0.8": dict(method="assd_fused", draft_len=8, temperature=0.7, top_p=0.8),
    "assd_adaptive_k8-t1_topk2": dict(method="assd", draft_len=8, adaptive=True, top_k=2),
    "fused_adaptive_k8-t1": dict(method="assd_fused", draft_len=8, adaptive=True),
}
# The development lane (-m "not slow") runs one config of each sampler (12-20 s each on 2 loaded
# cores); greedy decoding is also checked against argmax decoding (test_sampling.py).
_FAST_CONFIGS = ("sequential-t1", "assd_k3-t1", "fused_k3-t1")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[] if name in _FAST_CONFIGS else [pytest.mark.slow])
    for name in CONFIGS])
def test_cached_samples_equal_uncached(model, ragged, name):
  cfg, params = model
  tokens, ranks, num_prompt, num_valid = ragged
  key = jax.random.key(zlib.crc32(name.encode()))
  outs = [sampling.sample(params, cfg, tokens, ranks, num_prompt, key, num_valid=num_valid,
                          use_cache=use_cache, **CONFIGS[name]) for use_cache in (False, True)]
  for field in ("tokens", "nfe", "rounds", "accepted", "drafted"):
    np.testing.assert_array_equal(getattr(outs[0], field), getattr(outs[1], field), err_msg=field)
  result = np.asarray(outs[1].tokens)
  padding = ranks >= num_valid[:, None]
  np.testing.assert_array_equal(result[padding], tokens[padding])
  assert np.all((result[~padding] >= 0) & (result[~padding] < lib.SAMPLABLE))


# The uncached samplers' laws by enumeration (the cached ones: test_sampling_exact.py and
# test_sampling_fused.py). Identical samples above make most of these redundant, so only one runs
# by default.
UNCACHED_LAWS = {
    "sequential-t1": ("sequential", dict(method="sequential"), "t1"),
    "assd_k3-t0.7_topp0.8": ("assd_k3", dict(method="assd", draft_len=3), "t0.7_topp0.8"),
    "assd_k8-t1_topk2": ("assd_k8", dict(method="assd", draft_len=8), "t1_topk2"),
    "fused_k3-t1": ("fused_k3", dict(method="assd_fused", draft_len=3), "t1"),
}
_FAST = ("fused_k3-t1",)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[] if name in _FAST else [pytest.mark.slow])
    for name in UNCACHED_LAWS])
def test_uncached_law_matches_enumeration(model, name):
  _, options, sampling_name = UNCACHED_LAWS[name]
  lib.assert_exact(model, f"uncached/{name}", sampling_name, **options, use_cache=False)

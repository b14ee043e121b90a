"""bfloat16 inference (`model.cast_for_inference`): a different model, sampled exactly.

The bfloat16 model's law is enumerated with its own full forward (lib.exact_law); the cached
speculative samplers on that model must draw from it. The float32 model's law is a different one,
which the same samples are not required to match.
"""
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import processors, sampling
from asarm_jax.model import cast_for_inference
import _sampling_testlib as lib

PER_CASE = 20_000


@pytest.fixture(scope="module")
def bf16_model():
  cfg, params = lib.tiny_model()
  return cast_for_inference(cfg, params, "bfloat16")


def test_cast_stores_and_computes_in_bfloat16(bf16_model):
  cfg, params = bf16_model
  assert cfg.dtype == cfg.param_dtype == "bfloat16"
  leaves = jax.tree_util.tree_leaves(params)
  assert leaves and all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
  tokens, ranks, num_prompt = lib.ragged_batch(4)
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(0),
                        method="assd_fused", draft_len=3)
  assert np.asarray(out.tokens).dtype == np.int32


def test_cast_rejects_unknown_dtypes():
  cfg, params = lib.tiny_model()
  with pytest.raises(ValueError, match="inference dtype must be"):
    cast_for_inference(cfg, params, "float8")


@pytest.mark.parametrize("options", [dict(method="assd_fused", draft_len=3),
                                     dict(method="assd", draft_len=3)],
                         ids=lambda o: o["method"])
def test_bfloat16_law_matches_enumeration(bf16_model, options):
  cfg, params = bf16_model
  config = processors.SamplingConfig(banned_ids=(lib.MASK_ID,))
  laws = [lib.exact_law(cfg, params, case, config) for case in lib.CASES]
  tokens, ranks, num_prompt = lib.case_batch(lib.CASES, PER_CASE)
  seed = zlib.crc32(f"bf16/{options['method']}".encode())
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(seed), **options)
  samples = np.asarray(out.tokens)
  reports = [lib.compare_law(samples[c * PER_CASE:(c + 1) * PER_CASE], case, law)
             for c, (case, law) in enumerate(zip(lib.CASES, laws))]
  print(options, [(r.name, f"p={r.pvalue:.3g}", f"tv={r.tv:.4f}<={r.tv_bound:.4f}")
                  for r in reports])
  assert all(r.ok for r in reports), reports

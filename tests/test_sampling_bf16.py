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


@pytest.mark.parametrize("options", [
    pytest.param(dict(method="assd_fused", draft_len=3), id="assd_fused"),
    pytest.param(dict(method="assd", draft_len=3), id="assd", marks=pytest.mark.slow)])
def test_bfloat16_law_matches_enumeration(bf16_model, options):
  laws = lib.case_laws(bf16_model, processors.SamplingConfig(banned_ids=(lib.MASK_ID,)))
  samples, _ = lib.draw(bf16_model, zlib.crc32(f"bf16/{options['method']}".encode()), **options)
  reports = lib.check_all(samples, laws)
  print(options, [r.summary() for r in reports])
  assert all(r.ok for r in reports), reports

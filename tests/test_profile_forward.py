"""benchmarks/profile_forward.py: trace parsing and attribution (no timing assertions)."""
import json

import jax
import jax.numpy as jnp
import pytest

from asarm_jax import ModelConfig
from benchmarks import profile_forward as prof

TINY = ModelConfig(vocab_size=64, mask_token_id=63, d_model=32, n_layers=2, n_heads=2, d_head=16,
                   d_inner=64, max_len=32)


def test_categories_follow_the_model_einsums():
  layer = "while/body/ASARM.extend/ASARM._run/layer_0"
  assert prof.category(f"{layer}/attention/bhrd,bhdn->bhrn/dot_general") == prof.CATEGORIES[0][0]
  assert prof.category(f"{layer}/attention/bhrn,bhnd->bhrd/dot_general") == prof.CATEGORIES[1][0]
  assert prof.category(f"{layer}/attention/jit(_where)/select_n").startswith("attention: mask")
  assert prof.category(f"{layer}/ff/layer_1/dot_general") == "feed-forward"
  assert prof.category("while/body/ASARM.extend/ASARM._run/bqm,vm->bqv/dot_general") == "LM head"
  assert prof.category("while/body/vmap()/reduce") == prof.SAMPLER
  assert prof.category("") == prof.UNATTRIBUTED


def test_op_names_reads_compiled_hlo():
  compiled = jax.jit(lambda x: jnp.einsum("ij,jk->ik", x, x) + 1).lower(
      jnp.ones((4, 4))).compile()
  names = prof.op_names(compiled.as_text())
  assert any("ij,jk->ik" in op for op in names.values()), names


@pytest.mark.slow
def test_profile_attributes_every_kernel(tmp_path):
  """A traced run at two batch sizes: categories add up to the kernel total, the model's ops are
  found, and the JSON and table are written."""
  out = tmp_path / "profile.json"
  results = prof.run([16], [1, 2], out=out, cfg=TINY, log=lambda line: None)
  assert json.loads(out.read_text()) == results
  assert "| attention: scores over cached keys |" in out.with_suffix(".md").read_text()
  for setting in results["settings"]:
    categories = setting["categories_ms_per_iteration"]
    assert sum(categories.values()) == pytest.approx(setting["kernel_ms_per_iteration"])
    assert setting["iterations"] == int(16 * prof.HIDDEN_FRACTION)  # sequential: one per token
    assert setting["kernels_per_iteration"] > 10
    # (Which einsums keep their op_name depends on XLA's rewrites at these tiny shapes.)
    assert categories["feed-forward"] > 0
    assert sum(t for name, t in categories.items() if name.startswith("attention:")) > 0
    assert setting["cache_products"]["bytes_read_per_forward"] == (
        2 * TINY.n_layers * setting["batch"] * TINY.n_heads * TINY.d_head * 16 * 4)
  with pytest.raises(ValueError, match="max_len"):
    prof.run([64], [1], out=out, cfg=TINY, log=lambda line: None)


def test_model_config_names_the_two_sizes():
  from benchmarks import real_size  # pylint: disable=import-outside-toplevel
  assert prof.model_config("xlnet_base") == real_size.XLNET_BASE
  assert prof.model_config("default") == prof.default_sized_config()
  with pytest.raises(ValueError, match="--model must be one of"):
    prof.model_config("xlnet_large")

"""The two-stream model: shapes, dtypes, the information flow the masks promise, cached == full."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import ASARM, ModelConfig, empty_cache, init_params, masks

CFG = ModelConfig(vocab_size=13, mask_token_id=12, d_model=32, n_layers=2, n_heads=4, d_head=8,
                  d_inner=48, max_len=16)
BATCH, LENGTH = 3, 10


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


def _random_problem(seed, num_prompt=3):
  k_tok, k_prompt, k_order = jax.random.split(jax.random.key(seed), 3)
  tokens = jax.random.randint(k_tok, (BATCH, LENGTH), 0, CFG.vocab_size - 1)
  prompt_positions = jax.vmap(lambda k: jax.random.permutation(k, LENGTH)[:num_prompt])(
      jax.random.split(k_prompt, BATCH))
  is_prompt = jnp.zeros((BATCH, LENGTH), bool).at[jnp.arange(BATCH)[:, None],
                                                  prompt_positions].set(True)
  return tokens, masks.random_ranks(k_order, is_prompt), num_prompt


def _apply(params, tokens, ranks, num_prompt):
  return ASARM(CFG).apply({"params": params}, tokens, ranks, num_prompt)


def test_logits_shape_and_dtype(params):
  tokens, ranks, num_prompt = _random_problem(1)
  logits = _apply(params, tokens, ranks, num_prompt)
  assert logits.shape == (BATCH, LENGTH, CFG.vocab_size)
  assert logits.dtype == jnp.float32
  assert jnp.all(jnp.isfinite(logits))


@pytest.mark.parametrize("seed", range(3))
def test_logit_depends_only_on_lower_ranks(seed, params):
  tokens, ranks, num_prompt = _random_problem(seed)
  logits = _apply(params, tokens, ranks, num_prompt)
  for cut in (num_prompt, num_prompt + 2, LENGTH - 2):
    # Change every token of rank >= cut: logits at rank <= cut must stay; some others must move.
    changed = jnp.where(ranks >= cut, (tokens + 1 + seed) % (CFG.vocab_size - 1), tokens)
    moved = _apply(params, changed, ranks, num_prompt)
    kept = (ranks <= cut)[:, :, None]
    np.testing.assert_allclose(jnp.where(kept, moved, 0), jnp.where(kept, logits, 0), atol=1e-6)
    assert float(jnp.max(jnp.abs(jnp.where(kept, 0, moved - logits)))) > 1e-4


def test_query_stream_never_sees_its_own_token(params):
  tokens, ranks, num_prompt = _random_problem(7)
  logits = _apply(params, tokens, ranks, num_prompt)
  last = masks.positions_by_rank(ranks)[:, -1]  # [B]
  rows = jnp.arange(BATCH)
  changed = tokens.at[rows, last].set((tokens[rows, last] + 1) % (CFG.vocab_size - 1))
  moved = _apply(params, changed, ranks, num_prompt)
  np.testing.assert_allclose(moved, logits, atol=1e-6)


def test_forward_with_query_positions_matches_full(params):
  tokens, ranks, num_prompt = _random_problem(2)
  content, query = masks.density_masks(ranks, num_prompt)
  model = ASARM(CFG)
  full = model.apply({"params": params}, tokens, content, query, method=ASARM.forward)
  picked = jnp.array([[0, 5], [9, 1], [4, 4]])
  some = model.apply({"params": params}, tokens, content, query, picked, method=ASARM.forward)
  np.testing.assert_allclose(some, jnp.take_along_axis(full, picked[:, :, None], axis=1),
                             atol=1e-6)


def test_cached_extend_matches_full_forward(params):
  """Prefill the prompt, then add one rank at a time (a chunk of two at the end)."""
  num_prompt = 3
  tokens, ranks, _ = _random_problem(4, num_prompt)
  model = ASARM(CFG)
  full = _apply(params, tokens, ranks, num_prompt)
  content, query = masks.density_masks(ranks, num_prompt)
  order = masks.positions_by_rank(ranks)  # [B, N]

  def rows(mask, positions):
    return jnp.take_along_axis(mask, positions[:, :, None], axis=1)

  cache = empty_cache(CFG, BATCH, LENGTH)
  prompt = order[:, :num_prompt]
  _, cache = model.apply({"params": params}, cache, jnp.take_along_axis(tokens, prompt, 1), prompt,
                         rows(content, prompt), prompt, rows(query, prompt), method=ASARM.extend)
  chunks = [order[:, r:r + 1] for r in range(num_prompt, LENGTH - 2)] + [order[:, LENGTH - 2:]]
  for chunk in chunks:
    logits, cache = model.apply({"params": params}, cache, jnp.take_along_axis(tokens, chunk, 1),
                                chunk, rows(content, chunk), chunk, rows(query, chunk),
                                method=ASARM.extend)
    np.testing.assert_allclose(logits, jnp.take_along_axis(full, chunk[:, :, None], axis=1),
                               atol=1e-5)


def test_extend_drops_padding_rows(params):
  """Content positions equal to N are computed but never written to the cache."""
  tokens, ranks, num_prompt = _random_problem(5)
  content, query = masks.density_masks(ranks, num_prompt)
  cache = empty_cache(CFG, BATCH, LENGTH)
  padding = jnp.full((BATCH, 2), LENGTH, jnp.int32)
  _, after = ASARM(CFG).apply({"params": params}, cache, tokens[:, :2], padding,
                              content[:, :2], padding, query[:, :2], method=ASARM.extend)
  np.testing.assert_array_equal(after.keys, cache.keys)
  np.testing.assert_array_equal(after.values, cache.values)


def test_empty_prompt_first_row_is_position_independent(params):
  tokens, _, _ = _random_problem(6)
  ranks = masks.random_ranks(jax.random.key(9), jnp.zeros((BATCH, LENGTH), bool))
  logits = _apply(params, tokens, ranks, 0)
  first = jnp.take_along_axis(logits, masks.positions_by_rank(ranks)[:, :1, None], axis=1)
  np.testing.assert_allclose(first, jnp.broadcast_to(first[:1], first.shape), atol=1e-6)


@pytest.mark.slow
def test_bfloat16_params_give_float32_logits():
  cfg = ModelConfig(**{**CFG.to_dict(), "dtype": "bfloat16", "param_dtype": "bfloat16"})
  params = init_params(cfg, jax.random.key(0))
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
  tokens, ranks, num_prompt = _random_problem(1)
  logits = ASARM(cfg).apply({"params": params}, tokens, ranks, num_prompt)
  assert logits.dtype == jnp.float32
  reference = _apply(jax.tree.map(lambda x: x.astype(jnp.float32), params), tokens, ranks,
                     num_prompt)
  np.testing.assert_allclose(logits, reference, atol=0.1)


def test_dropout_needs_rng_and_changes_logits():
  cfg = ModelConfig(**{**CFG.to_dict(), "dropout": 0.2})
  params = init_params(cfg, jax.random.key(0))
  tokens, ranks, num_prompt = _random_problem(1)
  model = ASARM(cfg)
  a = model.apply({"params": params}, tokens, ranks, num_prompt, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})
  b = model.apply({"params": params}, tokens, ranks, num_prompt, deterministic=False,
                  rngs={"dropout": jax.random.key(2)})
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  c = model.apply({"params": params}, tokens, ranks, num_prompt)
  d = model.apply({"params": params}, tokens, ranks, num_prompt)
  np.testing.assert_array_equal(c, d)


def test_model_config_rejects_bad_values_and_long_sequences(params):
  with pytest.raises(ValueError, match="d_model"):
    ModelConfig(vocab_size=10, mask_token_id=9, d_model=33)
  with pytest.raises(ValueError, match="mask_token_id"):
    ModelConfig(vocab_size=10, mask_token_id=10)
  with pytest.raises(ValueError, match="ff_activation"):
    ModelConfig(vocab_size=10, mask_token_id=9, ff_activation="swishy")
  with pytest.raises(ValueError, match="unknown ModelConfig keys"):
    ModelConfig.from_dict({**CFG.to_dict(), "n_layer": 3})
  assert ModelConfig.from_dict(CFG.to_dict()) == CFG
  long_tokens = jnp.zeros((1, CFG.max_len + 1), jnp.int32)
  with pytest.raises(ValueError, match="max_len"):
    _apply(params, long_tokens, masks.left_to_right_ranks(1, CFG.max_len + 1), 1)

"""Tests for asarm_jax.processors: each transform by hand, compositions, p/q consistency."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax.processors import (SamplingConfig, cumulative_sum, inverse_cdf,
                                  log_probabilities, probabilities, sample_from)


def _softmax(x):
  e = np.exp(np.asarray(x, np.float64) - np.max(x))
  return e / e.sum()


def _probs(logits, **kwargs) -> np.ndarray:
  return np.asarray(probabilities(jnp.asarray(logits, jnp.float32), SamplingConfig(**kwargs)))


def test_default_is_plain_softmax():
  logits = [0.5, -1.0, 2.0, 0.0]
  np.testing.assert_allclose(_probs(logits), _softmax(logits), rtol=1e-6)


def test_banned_ids_get_zero_and_rest_renormalises():
  probs = _probs([1.0, 3.0, 2.0, 0.0], banned_ids=(1, 3))
  assert probs[1] == 0 and probs[3] == 0
  np.testing.assert_allclose(probs, [_softmax([1, 2])[0], 0, _softmax([1, 2])[1], 0], rtol=1e-6)


def test_temperature_scales_logits():
  logits = np.array([1.0, 2.0, 4.0])
  np.testing.assert_allclose(_probs(logits, temperature=2.0), _softmax(logits / 2), rtol=1e-6)
  np.testing.assert_allclose(_probs(logits, temperature=0.5), _softmax(logits * 2), rtol=1e-6)


def test_greedy_is_one_hot_first_index_on_ties_and_respects_bans():
  np.testing.assert_array_equal(_probs([0.0, 3.0, 1.0, 3.0], temperature=0.0), [0, 1, 0, 0])
  np.testing.assert_array_equal(
      _probs([0.0, 3.0, 1.0, 3.0], temperature=0.0, banned_ids=(1,)), [0, 0, 0, 1])
  # top-k / top-p cannot change a greedy choice.
  np.testing.assert_array_equal(
      _probs([5.0, 1.0, 2.0], temperature=0.0, top_k=2, top_p=0.1), [1, 0, 0])


def test_top_k_keeps_k_largest():
  logits = [1.0, 4.0, 2.0, 3.0, 0.0]
  expected = np.zeros(5)
  expected[[1, 3]] = _softmax([4.0, 3.0])
  np.testing.assert_allclose(_probs(logits, top_k=2), expected, rtol=1e-6)
  np.testing.assert_allclose(_probs(logits, top_k=5), _softmax(logits), rtol=1e-6)


def test_top_k_ties_keep_exactly_k_lowest_ids():
  # Values 2, 5, 5, 5, 1: top_k=2 keeps ids 1 and 2 (the lower ids among the tied 5s).
  np.testing.assert_allclose(_probs([2.0, 5.0, 5.0, 5.0, 1.0], top_k=2), [0, 0.5, 0.5, 0, 0])
  # -0.0 and 0.0 are the same logit: the lower id wins.
  np.testing.assert_array_equal(_probs([1.0, -0.0, 0.0], top_k=2) > 0, [True, True, False])
  np.testing.assert_array_equal(_probs([1.0, 0.0, -0.0], top_k=2) > 0, [True, True, False])


def test_top_k_counts_banned_ids_out():
  # Banned id 1 is the largest logit: it is excluded before top-k picks ids 3 and 0.
  probs = _probs([3.0, 9.0, 1.0, 4.0], top_k=2, banned_ids=(1,))
  np.testing.assert_allclose(probs, [_softmax([3, 4])[0], 0, 0, _softmax([3, 4])[1]], rtol=1e-6)


def test_top_p_hand_computed():
  base = np.array([0.5, 0.05, 0.3, 0.15])
  logits = np.log(base)
  # mass of {0} = 0.5 < 0.6, of {0, 2} = 0.8 >= 0.6 -> keep ids 0 and 2.
  np.testing.assert_allclose(_probs(logits, top_p=0.6), [0.625, 0, 0.375, 0], rtol=1e-5)
  # 0.5 >= 0.4: the top token alone.
  np.testing.assert_allclose(_probs(logits, top_p=0.4), [1, 0, 0, 0])
  # A tiny top_p still keeps the most likely token.
  np.testing.assert_allclose(_probs(logits, top_p=1e-6), [1, 0, 0, 0])
  # 0.95 needs ids 0, 2, 3 (mass 0.95) -> only id 1 is dropped.
  np.testing.assert_allclose(_probs(logits, top_p=0.9), [0.5, 0, 0.3, 0.15] / np.float64(0.95),
                             rtol=1e-5)


def test_top_p_mass_property_random():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 50)) * 2
  for top_p in (0.3, 0.7, 0.95):
    probs = _probs(logits, top_p=top_p)
    full = np.stack([_softmax(row) for row in logits])
    for row_full, row in zip(full, probs):
      kept = row > 0
      assert row_full[kept].sum() >= top_p - 1e-5  # The kept set has enough mass ...
      # ... and is minimal: dropping its least likely token would go below top_p.
      assert row_full[kept].sum() - row_full[kept].min() < top_p + 1e-5
      # It is a prefix of the ranking: every kept token beats every dropped one.
      if (~kept).any():
        assert row_full[kept].min() >= row_full[~kept].max()
      np.testing.assert_allclose(row[kept], row_full[kept] / row_full[kept].sum(), rtol=1e-4)


def test_composition_temperature_then_top_k_then_top_p():
  logits = np.array([2.0, 0.0, 1.0, 3.0, -1.0])
  # T=0.5 -> logits 4, 0, 2, 6, -2; top_k=3 keeps ids 3, 0, 2; their softmax is
  # approx [0.8668, 0.1173, 0.0159] (ids 3, 0, 2); top_p=0.9 keeps ids 3 and 0.
  scaled = _softmax([6.0, 4.0, 2.0])
  assert scaled[0] < 0.9 <= scaled[0] + scaled[1]
  expected = np.zeros(5)
  expected[[3, 0]] = _softmax([6.0, 4.0])
  probs = _probs(logits, temperature=0.5, top_k=3, top_p=0.9, banned_ids=(4,))
  np.testing.assert_allclose(probs, expected, rtol=1e-5)


def test_float32_output_from_bfloat16_input():
  logits = jnp.asarray([[1.0, 2.0, 3.0]], jnp.bfloat16)
  probs = probabilities(logits, SamplingConfig(top_p=0.9))
  assert probs.dtype == jnp.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  assert log_probabilities(logits, SamplingConfig()).dtype == jnp.float32


def test_log_probabilities_is_log_of_probabilities():
  logits = jnp.asarray([0.1, 2.0, -1.0, 0.5])
  cfg = SamplingConfig(top_k=3, banned_ids=(0,))
  logp = np.asarray(log_probabilities(logits, cfg))
  np.testing.assert_allclose(np.exp(logp), np.asarray(probabilities(logits, cfg)), rtol=1e-6)
  assert logp[0] == -np.inf


def test_jit_and_vmap_match_eager():
  cfg = SamplingConfig(temperature=0.7, top_k=5, top_p=0.8, banned_ids=(0,))
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 20))
  eager = probabilities(logits, cfg)
  jitted = jax.jit(probabilities, static_argnums=1)(logits, cfg)
  vmapped = jax.vmap(jax.vmap(functools.partial(probabilities, cfg=cfg)))(logits)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(vmapped, eager, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(eager.sum(-1), 1.0, rtol=1e-5)


def test_config_is_hashable_static_and_normalised():
  a = SamplingConfig(top_k=3, banned_ids=[5, 2, 5])
  b = SamplingConfig(top_k=3, banned_ids=(2, 5))
  assert a == b and hash(a) == hash(b) and a.banned_ids == (2, 5)
  calls = []

  @functools.partial(jax.jit, static_argnums=1)
  def f(x, cfg):
    calls.append(cfg)
    return probabilities(x, cfg)

  x = jnp.zeros((2, 8))
  f(x, a)
  f(x, b)
  assert len(calls) == 1  # Equal configs share one compilation.


@pytest.mark.parametrize("cfg_kwargs", [
    dict(),
    dict(temperature=0.0),
    dict(temperature=1.3, top_k=7),
    dict(top_p=0.6, banned_ids=(3,)),
    dict(temperature=0.8, top_k=40, top_p=0.9, banned_ids=(0, 1)),
])
def test_batch_and_row_by_row_are_bitwise_identical(cfg_kwargs):
  cfg = SamplingConfig(**cfg_kwargs)
  logits = jax.random.normal(jax.random.PRNGKey(1), (6, 97)) * 3  # [B, V]
  fn = jax.jit(probabilities, static_argnums=1)
  batch = np.asarray(fn(logits, cfg))  # [B, V]
  for i in range(logits.shape[0]):
    np.testing.assert_array_equal(np.asarray(fn(logits[i], cfg)), batch[i])  # [V]
    np.testing.assert_array_equal(np.asarray(fn(logits[i:i + 1], cfg))[0], batch[i])
    np.testing.assert_array_equal(np.asarray(probabilities(logits[i], cfg)), batch[i])
  vmapped = np.asarray(jax.jit(jax.vmap(functools.partial(probabilities, cfg=cfg)))(logits))
  np.testing.assert_array_equal(vmapped, batch)


def test_banned_and_truncated_tokens_are_never_sampled():
  logits = jnp.asarray([5.0, 0.0, 0.1, 4.0, 0.2, 3.0])
  cfg = SamplingConfig(top_k=3, banned_ids=(0,))
  probs = probabilities(logits, cfg)  # Allowed: ids 3, 5, 4.
  ids = np.asarray(sample_from(jax.random.PRNGKey(0), jnp.broadcast_to(probs, (20000, 6))))
  assert ids.dtype == np.int32 and ids.shape == (20000,)
  assert set(np.unique(ids)) == {3, 4, 5}
  frequencies = np.bincount(ids, minlength=6) / ids.size
  np.testing.assert_allclose(frequencies, np.asarray(probs), atol=0.015)


def test_inverse_cdf_never_returns_an_empty_slice_even_at_the_ends():
  probs = jnp.asarray([0.0, 0.25, 0.0, 0.75, 0.0, 0.0])  # token 5 and 4, 2, 0 have no mass
  below_one = np.nextafter(np.float32(1), np.float32(0))
  u = jnp.asarray([0.0, 0.2499, 0.25, 0.9, below_one], jnp.float32)
  ids = inverse_cdf(u, jnp.broadcast_to(probs, (5, 6)))
  np.testing.assert_array_equal(ids, [1, 1, 3, 3, 3])
  # Unnormalised input: u scales the total mass.
  np.testing.assert_array_equal(inverse_cdf(jnp.asarray([0.3]), jnp.asarray([[0.0, 2.0, 2.0]])),
                                [1])


def test_inverse_cdf_across_blocks_matches_a_float64_search():
  """V spans several blocks of 64, with empty blocks, zeros at block edges and a last block cut
  short: the token drawn for every u is the float64 inverse CDF's, and never an empty slice."""
  rng = np.random.default_rng(0)
  probs = rng.random(300).astype(np.float32) * (rng.random(300) < 0.5)
  probs[64:192] = 0.0  # two empty blocks
  probs[[63, 192, 255, 256, 299]] = 0.0  # zeros at block edges and at the end
  probs[[0, 298]] = 0.5
  probs /= probs.sum()
  u = np.concatenate([rng.random(5000), [0.0, np.nextafter(1, 0)]]).astype(np.float32)
  ids = np.asarray(inverse_cdf(jnp.asarray(u), jnp.broadcast_to(jnp.asarray(probs), (u.size, 300))))
  cdf = np.cumsum(probs.astype(np.float64))
  expected = np.minimum(np.searchsorted(cdf, u.astype(np.float64) * cdf[-1], side="right"),
                        np.flatnonzero(probs)[-1])
  assert (probs[ids] > 0).all()
  # float32 rounding may move a u that sits within ~1e-6 of a slice edge to the neighbouring token.
  assert np.mean(ids == expected) > 0.999


@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000, 4096])
def test_cumulative_sum_matches_a_float64_running_sum(length):
  """Blocked or not (V <= 64), every prefix sum of a [3, 2, V] array, and exact on integers."""
  x = np.random.default_rng(length).random((3, 2, length)).astype(np.float32)
  got = np.asarray(cumulative_sum(jnp.asarray(x)))
  assert got.shape == x.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, np.cumsum(x.astype(np.float64), axis=-1), rtol=1e-5, atol=1e-5)
  counts = np.ones((2, length), np.float32)
  np.testing.assert_array_equal(cumulative_sum(jnp.asarray(counts)), np.cumsum(counts, axis=-1))


def test_sample_from_greedy_is_argmax():
  probs = probabilities(jnp.asarray([[0.0, 2.0, 1.0], [3.0, 2.0, 3.0]]),
                        SamplingConfig(temperature=0.0))
  for seed in range(5):
    np.testing.assert_array_equal(sample_from(jax.random.PRNGKey(seed), probs), [1, 0])


@pytest.mark.parametrize("cfg_kwargs, argument", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=11), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(banned_ids=(10,)), "banned_ids"),
    (dict(banned_ids=(-1,)), "banned_ids"),
    (dict(banned_ids=tuple(range(10))), "banned_ids"),
])
def test_bad_configs_raise_value_error_naming_the_argument(cfg_kwargs, argument):
  """Each bad value is caught once: when the config is made, or (the checks that need V) by
  `validate`, which the sampler calls once per Sampler."""
  with pytest.raises(ValueError, match=argument):
    SamplingConfig(**cfg_kwargs).validate(vocab_size=10)


def test_good_edge_configs_validate():
  SamplingConfig(temperature=0.0, top_k=10, top_p=1.0, banned_ids=tuple(range(9))).validate(10)

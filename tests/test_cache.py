"""The order-aware cache: row planning, and every cached forward of the samplers equals the full
one.

States are drawn at random mid-decoding (ragged: each row its own order, prompt length, progress and
cache fill), the cache is filled for the ranks below `num_cached` and *poisoned* everywhere else,
and each kind of forward the samplers run (sequential, ASSD draft and verify, fused, first forward
with the prompt's content rows) must give the logits of a full forward under explicit masks, and
leave valid keys/values for the new content rows.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import cache as cache_lib
from asarm_jax import masks, sampling
from asarm_jax.model import ASARM, empty_cache
import _sampling_testlib as lib

BATCH = 12
LENGTH = 12
DRAFT = 3


@pytest.fixture(scope="module")
def model():
  return lib.tiny_model(seed=3, max_len=LENGTH)


@functools.partial(jax.jit, static_argnums=0)
def _prefilled(cfg, params, tokens, ranks, num_prompt, upto):
  """A cache whose entries at ranks < upto are exact (one extend call with density content rows, as
  in test_model) and whose other entries are large noise."""
  order = masks.positions_by_rank(ranks)
  row_ranks = jnp.broadcast_to(jnp.arange(LENGTH), (BATCH, LENGTH))
  positions = jnp.where(row_ranks < upto[:, None], order, LENGTH)  # [B, N]: padding = N
  content = masks.visibility(row_ranks, ranks, num_prompt, inclusive=True)
  query = masks.visibility(row_ranks[:, :1], ranks, num_prompt, inclusive=False)
  _, cache = ASARM(cfg).apply({"params": params}, empty_cache(cfg, BATCH, LENGTH),
                              jnp.take_along_axis(tokens, order, axis=1), positions, content,
                              order[:, :1], query, method=ASARM.extend)
  stale = ranks >= upto[:, None]  # [B, N]
  noise = 10.0 * jax.random.normal(jax.random.key(0), cache.values[0].shape)  # [B, H, N, D]
  keys = tuple(jnp.where(stale[:, None, None], noise.swapaxes(2, 3), k)  # [B, H, D, N]
               for k in cache.keys)
  values = tuple(jnp.where(stale[:, None, :, None], -noise, v) for v in cache.values)
  return cache_lib.KVCache(keys=keys, values=values)


def _random_state(cfg, params, seed):
  """Per row: a random order and prompt length (0..3), n decided ranks, m in-flight drafts written
  in, and a cache valid below num_cached in {n - 1, n}, at least num_prompt (the prompt block is
  cached at once: its rows see each other)."""
  rs = np.random.RandomState(seed)
  ranks = np.stack([rs.permutation(LENGTH) for _ in range(BATCH)]).astype(np.int32)
  num_prompt = rs.randint(0, 4, BATCH).astype(np.int32)
  n = np.array([rs.randint(p, LENGTH - 1) for p in num_prompt], np.int32)
  m = np.minimum(rs.randint(1, DRAFT + 1, BATCH), LENGTH - n).astype(np.int32)
  num_cached = np.maximum(n - rs.randint(0, 2, BATCH), num_prompt).astype(np.int32)
  tokens = rs.randint(0, lib.SAMPLABLE, (BATCH, LENGTH)).astype(np.int32)
  tokens = np.where(ranks < (n + m)[:, None], tokens, lib.MASK_ID)  # decided + drafts
  sampler = sampling.Sampler.create(cfg, method="assd", draft_len=DRAFT)
  batch = sampler.batch(tokens, ranks, num_prompt, jax.random.key(seed))
  state = sampling._initial_state(params, sampler, batch)
  return state.replace(num_decided=jnp.asarray(n), num_cached=jnp.asarray(num_cached)), m


def _passes(n, m):
  """Each sampler forward: (horizon [B], query ranks [B, Q], content rows S, num_cached or None)."""
  slots = np.arange(DRAFT)[None, :]
  drafts = n[:, None] + slots
  return {
      "sequential": (n, n[:, None], 1, None),
      "assd_draft": (n, drafts, 1, None),
      "assd_verify": (n + m, drafts, DRAFT, n),
      "fused": (n + m, np.concatenate([drafts, (n + m)[:, None] + slots], axis=1), DRAFT + 1, None),
      "first_forward": (n, drafts, LENGTH, np.zeros_like(n)),
  }


_cached_forward = jax.jit(sampling._forward, static_argnums=(1, 6))


@functools.partial(jax.jit, static_argnums=1)
def _references(params, cfg, state, horizon, query_ranks):
  """Logits at the query rows [B, Q, V] of the full forward under `masks.draft_masks` and of the
  density forward. Q is padded to 2 * DRAFT (one compilation for every kind of pass)."""
  query_ranks = jnp.pad(query_ranks, ((0, 0), (0, 2 * DRAFT - query_ranks.shape[1])), mode="edge")
  full, _ = sampling._forward(params, cfg, state.replace(cache=None), state.tokens, horizon,
                              query_ranks, 0)
  density = ASARM(cfg).apply({"params": params}, state.tokens, state.ranks, state.num_prompt)
  density = jnp.take_along_axis(density, sampling._pick(state.by_rank, query_ranks)[..., None],
                                axis=1)
  return full, density


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", list(_passes(np.zeros(1, int), np.ones(1, int))))
def test_cached_forward_matches_full_forward(model, seed, kind):
  cfg, params = model
  state, m = _random_state(cfg, params, seed)
  n = np.asarray(state.num_decided)
  horizon, query_ranks, num_content, num_cached = _passes(n, m)[kind]
  if num_cached is not None:
    state = state.replace(num_cached=jnp.asarray(num_cached, jnp.int32))
  state = state.replace(cache=_prefilled(cfg, params, state.tokens, state.ranks, state.num_prompt,
                                         state.num_cached))
  horizon = jnp.asarray(horizon, jnp.int32)
  query_ranks = jnp.minimum(jnp.asarray(query_ranks, jnp.int32), LENGTH - 1)
  cached, cache = _cached_forward(params, cfg, state, state.tokens, horizon, query_ranks,
                                 num_content)
  full, density = (x[:, :query_ranks.shape[1]]
                   for x in _references(params, cfg, state, horizon, query_ranks))
  np.testing.assert_allclose(cached, full, atol=1e-5)
  # An independent reference for the rows below the horizon: the density forward.
  below = np.asarray(query_ranks < horizon[:, None])
  np.testing.assert_allclose(np.asarray(cached)[below], np.asarray(density)[below], atol=1e-5)
  # The new content rows left exact keys/values: every rank below the horizon is now valid.
  exact = _prefilled(cfg, params, state.tokens, state.ranks, state.num_prompt, horizon)
  valid = np.asarray(state.ranks < horizon[:, None])  # [B, N]
  # Both as [L, B, N, H, D]: keys are stored [L, B, H, D, N], values [L, B, H, N, D].
  for got, want, axis in ((cache.keys, exact.keys, 4), (cache.values, exact.values, 3)):
    by_position = lambda layers: np.moveaxis(np.asarray(layers), axis, 2)
    np.testing.assert_allclose(by_position(got)[:, valid], by_position(want)[:, valid], atol=1e-5)


def test_the_poison_would_be_seen(model):
  """Control for the test above: a cache that claims one rank too many (its entry is poison) changes
  the logits, so an exact match above means that no stale entry was visible."""
  cfg, params = model
  state, m = _random_state(cfg, params, 0)
  n = jnp.maximum(state.num_decided, state.num_prompt + 1)  # rank n - 1 is not in the prompt
  state = state.replace(num_decided=n)
  cache = _prefilled(cfg, params, state.tokens, state.ranks, state.num_prompt, n - 1)
  horizon, query_ranks, _, _ = _passes(np.asarray(n), m)["assd_draft"]
  args = (state.tokens, jnp.asarray(horizon, jnp.int32),
          jnp.minimum(jnp.asarray(query_ranks, jnp.int32), LENGTH - 1), 1)
  honest, _ = _cached_forward(params, cfg, state.replace(cache=cache, num_cached=n - 1), *args)
  liar, _ = _cached_forward(params, cfg, state.replace(cache=cache, num_cached=n), *args)
  full, _ = _references(params, cfg, state, *args[1:3])
  np.testing.assert_allclose(honest, full[:, :DRAFT], atol=1e-5)
  change = np.abs(np.asarray(honest) - np.asarray(liar)).max(axis=(1, 2))  # [B]
  print("logit change per row when one poisoned entry is read:", change)
  assert np.median(change) > 1e-2


def test_content_rows_plan():
  by_rank = jnp.array([[2, 0, 1, 3], [3, 2, 1, 0]], jnp.int32)
  positions, ranks = cache_lib.content_rows(by_rank, jnp.array([1, 0]), jnp.array([3, 4]), 3,
                                            active=jnp.array([True, False]))
  np.testing.assert_array_equal(ranks, [[1, 2, 4], [4, 4, 4]])
  np.testing.assert_array_equal(positions, [[0, 1, 4], [4, 4, 4]])


def test_row_masks_are_rows_of_the_draft_masks():
  rs = np.random.RandomState(4)
  ranks = jnp.asarray(np.stack([rs.permutation(LENGTH) for _ in range(BATCH)]), jnp.int32)
  num_prompt = jnp.asarray(rs.randint(0, 4, BATCH), jnp.int32)
  horizon = num_prompt + jnp.asarray(rs.randint(0, 5, BATCH), jnp.int32)
  row_ranks = jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (BATCH, LENGTH))
  content, query = cache_lib.row_masks(ranks, num_prompt, horizon, row_ranks, row_ranks)
  full_content, full_query = masks.draft_masks(ranks, horizon, num_prompt)
  order = masks.positions_by_rank(ranks)
  np.testing.assert_array_equal(query, jnp.take_along_axis(full_query, order[:, :, None], axis=1))
  below = np.asarray(row_ranks < horizon[:, None])  # content rows are only computed below it
  np.testing.assert_array_equal(
      np.asarray(content)[below],
      np.asarray(jnp.take_along_axis(full_content, order[:, :, None], axis=1))[below])

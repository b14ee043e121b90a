"""Mask and order semantics: hand-checked cases, random properties, jit/vmap, bad input."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from asarm_jax import masks


@pytest.mark.parametrize("ranks, num_prompt, content, query", [
    # Position 1 is the prompt (rank 0), then position 2 (rank 1), then position 0 (rank 2).
    pytest.param([2, 0, 1], 1, [[1, 1, 1], [0, 1, 0], [0, 1, 1]],
                 [[0, 1, 1], [0, 1, 0], [0, 1, 0]], id="one_token_prompt"),
    # Ranks 0 and 1 (positions 2 and 0) form the prompt and see each other in both streams;
    # position 1 sees both.
    pytest.param([1, 2, 0], 2, [[1, 0, 1], [1, 1, 1], [1, 0, 1]],
                 [[1, 0, 1], [1, 0, 1], [1, 0, 1]], id="prompt_block_mutually_visible"),
])
def test_density_masks_hand_checked(ranks, num_prompt, content, query):
  got_content, got_query = masks.density_masks(jnp.array([ranks]), num_prompt)
  np.testing.assert_array_equal(got_content[0], content)
  np.testing.assert_array_equal(got_query[0], query)


@pytest.mark.parametrize("seed", range(5))
def test_density_mask_properties(seed):
  batch, length = 3, 9
  key_prompt, key_order = jax.random.split(jax.random.key(seed))
  is_prompt = jax.random.bernoulli(key_prompt, 0.3, (batch, length))
  ranks = masks.random_ranks(key_order, is_prompt)
  num_prompt = masks.num_prompt_of(is_prompt)
  content, query = masks.density_masks(ranks, num_prompt)
  assert not jnp.any(query & ~content), "query mask must be a subset of the content mask"
  diagonal = jnp.eye(length, dtype=bool)[None]
  assert jnp.all(jnp.where(diagonal, content, True)), "content rows see themselves"
  prompt_rows = (ranks < num_prompt[:, None])
  # Query rows see themselves only inside the prompt block.
  np.testing.assert_array_equal(jnp.diagonal(query, axis1=1, axis2=2), prompt_rows)
  block = prompt_rows[:, :, None] & prompt_rows[:, None, :]
  assert jnp.all(jnp.where(block, content & query, True))
  # Outside the prompt block, visibility is exactly the rank comparison.
  outside = ~block
  np.testing.assert_array_equal(jnp.where(outside, query, False),
                                jnp.where(outside, ranks[:, None, :] < ranks[:, :, None], False))
  # Visible-key counts: a non-prompt row at rank r sees exactly r keys in the query stream.
  counts = jnp.sum(query, axis=-1)
  np.testing.assert_array_equal(jnp.where(prompt_rows, num_prompt[:, None], ranks), counts)


@pytest.mark.parametrize("num_decided", [2, 4, 7])
def test_draft_masks_see_exactly_the_decided_positions(num_decided):
  batch, length, num_prompt = 2, 7, 2
  is_prompt = jnp.zeros((batch, length), bool).at[:, jnp.array([1, 5])].set(True)
  ranks = masks.random_ranks(jax.random.key(3), is_prompt)
  content, query = masks.draft_masks(ranks, num_decided, num_prompt)
  decided = ranks < num_decided
  undecided_rows = ~decided[:, :, None]
  expected = jnp.broadcast_to(decided[:, None, :], query.shape)
  np.testing.assert_array_equal(jnp.where(undecided_rows, query, False),
                                jnp.where(undecided_rows, expected, False))
  # Decided rows keep their density-mask rows in both streams.
  density_content, density_query = masks.density_masks(ranks, num_prompt)
  decided_rows = decided[:, :, None]
  np.testing.assert_array_equal(jnp.where(decided_rows, content, False),
                                jnp.where(decided_rows, density_content, False))
  np.testing.assert_array_equal(jnp.where(decided_rows, query, False),
                                jnp.where(decided_rows, density_query, False))
  # The row at rank num_decided has the same query row under both masks.
  if num_decided < length:
    nxt = masks.positions_by_rank(ranks)[:, num_decided]
    rows = jnp.arange(batch)
    np.testing.assert_array_equal(query[rows, nxt], density_query[rows, nxt])


def test_order_constructors():
  is_prompt = jnp.array([[False, True, False, True, False]])
  np.testing.assert_array_equal(masks.infill_ranks(is_prompt), [[2, 0, 3, 1, 4]])
  np.testing.assert_array_equal(masks.left_to_right_ranks(2, 4), [[0, 1, 2, 3]] * 2)
  ranks = masks.random_ranks(jax.random.key(0), jnp.tile(is_prompt, (64, 1)))
  np.testing.assert_array_equal(ranks[:, 1], 0)
  np.testing.assert_array_equal(ranks[:, 3], 1)
  np.testing.assert_array_equal(jnp.sort(ranks, axis=1), jnp.tile(jnp.arange(5), (64, 1)))
  # Every order of the three hidden positions occurs.
  hidden = np.asarray(ranks[:, jnp.array([0, 2, 4])])
  assert len({tuple(row) for row in hidden}) == 6
  order = masks.positions_by_rank(ranks)
  np.testing.assert_array_equal(jnp.take_along_axis(ranks, order, axis=1),
                                jnp.tile(jnp.arange(5), (64, 1)))


@pytest.mark.parametrize("order", masks.ORDERS)
def test_named_orders_put_prompt_first_hidden_next_padding_last(order):
  rs = np.random.RandomState(0)
  is_prompt = jnp.asarray(rs.rand(16, 12) < 0.3)
  valid = jnp.asarray(np.arange(12)[None] < rs.randint(1, 13, size=(16, 1)))
  is_prompt = is_prompt & valid
  ranks = np.asarray(masks.order_ranks(order, is_prompt, valid=valid, key=jax.random.key(1)))
  for row in range(16):
    prompt = np.flatnonzero(is_prompt[row])
    hidden = np.flatnonzero(valid[row] & ~is_prompt[row])
    padding = np.flatnonzero(~valid[row])
    np.testing.assert_array_equal(ranks[row, prompt], np.arange(len(prompt)))
    assert sorted(ranks[row, hidden]) == list(range(len(prompt), len(prompt) + len(hidden)))
    np.testing.assert_array_equal(ranks[row, padding], np.arange(12 - len(padding), 12))


def test_spread_order_takes_far_apart_positions_first_then_the_gaps():
  ranks = masks.order_ranks("spread", jnp.zeros((1, 8), bool))
  np.testing.assert_array_equal(masks.positions_by_rank(ranks)[0], [0, 4, 2, 6, 1, 5, 3, 7])
  # Among the hidden positions only (the prompt and padding do not count), with the prompt first.
  is_prompt = jnp.array([[False, True, False, False, True, False, False, False]])
  valid = jnp.arange(8)[None] < 7
  by_rank = masks.positions_by_rank(masks.order_ranks("spread", is_prompt, valid=valid))[0]
  np.testing.assert_array_equal(by_rank, [1, 4, 0, 6, 3, 2, 5, 7])


def test_random_order_is_uniform_over_the_hidden_positions():
  ranks = masks.order_ranks("random", jnp.zeros((1200, 3), bool), key=jax.random.key(2))
  counts = collections.Counter(tuple(row) for row in np.asarray(ranks))
  assert len(counts) == 6
  _, p_value = stats.chisquare(list(counts.values()))
  assert p_value > 1e-3
  with pytest.raises(ValueError, match="needs a PRNG key"):
    masks.order_ranks("random", jnp.zeros((1, 3), bool))
  with pytest.raises(ValueError, match=r"order must be one of \('left_to_right', 'random', "
                     r"'spread'\); got 'backwards'"):
    masks.order_ranks("backwards", jnp.zeros((1, 3), bool))


def test_masks_jit_and_vmap():
  ranks = masks.random_ranks(jax.random.key(1), jnp.zeros((4, 6), bool).at[:, 0].set(True))
  eager = masks.density_masks(ranks, 1)
  jitted = jax.jit(masks.density_masks)(ranks, 1)
  per_row = jax.vmap(lambda r: masks.density_masks(r[None], 1))(ranks)
  for a, b, c in zip(eager, jitted, per_row):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c[:, 0])
  draft = jax.jit(masks.draft_masks)(ranks, jnp.array([1, 2, 3, 4]), 1)
  assert draft[0].shape == (4, 6, 6)


@pytest.mark.parametrize("ranks, num_prompt, message", [
    ([[0, 1, 1]], 1, "not a permutation"),
    ([[0, 1, 3]], 1, "not a permutation"),
    ([0, 1, 2], 1, "shape"),
    ([[0.0, 1.0, 2.0]], 1, "integers"),
    ([[0, 1, 2]], 4, "num_prompt"),
    ([[0, 1, 2]], -1, "num_prompt"),
    ([[0, 1, 2], [2, 1, 0]], [1, 1, 1], "num_prompt"),
])
def test_validate_order_rejects_bad_input(ranks, num_prompt, message):
  with pytest.raises(ValueError, match=message):
    masks.validate_order(ranks, num_prompt)


def test_validate_order_checks_length_and_full_prompt():
  with pytest.raises(ValueError, match="length"):
    masks.validate_order([[0, 1, 2]], 1, seq_len=4)
  with pytest.raises(ValueError, match="num_prompt"):
    masks.validate_order([[0, 1, 2]], 3, allow_full_prompt=False)
  ranks, num_prompt = masks.validate_order([[2, 0, 1]], 3)
  assert ranks.dtype == np.int32 and num_prompt.tolist() == [3]

"""The any-order objective: masking rates, hidden sets, training orders and the masked loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import masks
from asarm_jax import objective
from asarm_jax.model import ASARM, ModelConfig, init_params

CFG = ModelConfig(vocab_size=32, mask_token_id=3, d_model=16, n_layers=1, n_heads=2, d_head=8,
                  d_inner=32, max_len=16)


def _valid(lengths, n):
  return jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]


def test_stratified_rates_fall_in_their_bins():
  batch, low, high = 8, 0.1, 0.9
  width = (high - low) / batch
  for seed in range(20):
    rates = np.asarray(objective.sample_rates(jax.random.key(seed), batch, low, high))
    bins = np.arange(batch)
    assert np.all(rates >= low + bins * width - 1e-6)
    assert np.all(rates <= low + (bins + 1) * width + 1e-6)


def test_unstratified_rates_cover_the_range():
  rates = np.asarray(objective.sample_rates(jax.random.key(0), 4096, 0.2, 0.4, stratified=False))
  assert rates.min() >= 0.2 and rates.max() <= 0.4
  assert abs(rates.mean() - 0.3) < 0.01


def test_rate_range_warms_up_linearly():
  masking = objective.MaskingConfig(min_rate=0.05, max_rate=0.25, start_rate=0.01,
                                    warmup_steps=100)
  np.testing.assert_allclose(objective.rate_range(masking, 0), (0.01, 0.01), atol=1e-7)
  np.testing.assert_allclose(objective.rate_range(masking, 50), (0.03, 0.13), atol=1e-6)
  np.testing.assert_allclose(objective.rate_range(masking, 100), (0.05, 0.25), atol=1e-7)
  np.testing.assert_allclose(objective.rate_range(masking, 10_000), (0.05, 0.25), atol=1e-7)
  plain = objective.MaskingConfig(min_rate=0.3, max_rate=0.6)
  np.testing.assert_allclose(objective.rate_range(plain, 0), (0.3, 0.6), atol=1e-7)


@pytest.mark.parametrize("kwargs", [dict(min_rate=0.5, max_rate=0.4), dict(max_rate=1.5),
                                    dict(start_rate=-0.1, warmup_steps=3),
                                    dict(hidden_order="right_to_left"),
                                    dict(hidden_order="mixture", mixture_left_to_right=1.5),
                                    dict(hidden_order="mixture", mixture_other="left_to_right")])
def test_masking_config_rejects_bad_values(kwargs):
  with pytest.raises(ValueError):
    objective.MaskingConfig(**kwargs)


def test_masking_config_rejects_unknown_keys():
  with pytest.raises(ValueError, match="min_rat"):
    objective.MaskingConfig.from_dict({"min_rat": 0.1})


def test_num_hidden_is_at_least_one_and_at_most_num_valid():
  valid = _valid([10, 10, 10, 3, 0], 10)
  rates = jnp.array([0.25, 0.0, 1.0, 0.5, 0.5])
  np.testing.assert_array_equal(objective.num_hidden_for(valid, rates), [2, 1, 10, 1, 0])


def test_hidden_sets_are_uniform_subsets_of_valid_positions():
  valid = _valid([12, 7], 16)
  num_hidden = jnp.array([5, 3])
  counts = np.zeros((2, 16))
  trials = 400
  for seed in range(trials):
    hidden = np.asarray(objective.choose_hidden(jax.random.key(seed), valid, num_hidden))
    np.testing.assert_array_equal(hidden.sum(-1), [5, 3])
    assert not np.any(hidden & ~np.asarray(valid))
    counts += hidden
  # Each valid position is hidden with probability k / n: 5/12 and 3/7.
  np.testing.assert_allclose(counts[0, :12] / trials, 5 / 12, atol=0.09)
  np.testing.assert_allclose(counts[1, :7] / trials, 3 / 7, atol=0.09)


def test_order_is_visible_then_hidden_left_to_right_then_padding():
  valid = jnp.array([[1, 1, 1, 1, 1, 1, 0, 0]], bool)
  hidden = jnp.array([[0, 1, 0, 0, 1, 1, 0, 0]], bool)
  order = objective.training_order(valid, hidden)
  # visible 0, 2, 3 -> ranks 0, 1, 2; hidden 1, 4, 5 -> 3, 4, 5; padding 6, 7 -> 6, 7.
  np.testing.assert_array_equal(order.ranks, [[0, 3, 1, 2, 4, 5, 6, 7]])
  np.testing.assert_array_equal(order.num_prompt, [3])
  np.testing.assert_array_equal(order.hidden, hidden)
  masks.validate_order(order.ranks, order.num_prompt)


def test_random_hidden_order_permutes_only_the_hidden_block():
  valid = _valid([14], 16)
  hidden = jnp.zeros((1, 16), bool).at[0, jnp.array([1, 4, 5, 8, 9, 13])].set(True)
  seen = set()
  for seed in range(10):
    order = objective.training_order(valid, hidden, hidden_order="random",
                                     rng=jax.random.key(seed))
    ranks = np.asarray(order.ranks[0])
    masks.validate_order(order.ranks, order.num_prompt)
    visible = np.flatnonzero(np.asarray(valid[0] & ~hidden[0]))
    np.testing.assert_array_equal(ranks[visible], np.arange(len(visible)))
    assert sorted(ranks[np.asarray(hidden[0])]) == list(range(8, 14))
    np.testing.assert_array_equal(ranks[14:], [14, 15])
    seen.add(tuple(ranks[np.asarray(hidden[0])]))
  assert len(seen) > 5


@pytest.mark.parametrize("left_to_right", [0.0, 0.3, 1.0])
def test_mixture_orders_each_row_left_to_right_with_its_probability(left_to_right):
  rows = 400
  valid = _valid([14] * rows, 16)
  hidden = jnp.zeros((rows, 16), bool).at[:, jnp.array([1, 4, 5, 8, 9, 13])].set(True)
  order = objective.training_order(valid, hidden, hidden_order="mixture", rng=jax.random.key(0),
                                   mixture_left_to_right=left_to_right, mixture_other="spread")
  masks.validate_order(order.ranks, order.num_prompt)
  plain = {name: np.asarray(objective.training_order(valid, hidden, hidden_order=name).ranks[0])
           for name in ("left_to_right", "spread")}
  ranks = np.asarray(order.ranks)
  is_plain = {name: (ranks == expected).all(axis=1) for name, expected in plain.items()}
  assert (is_plain["left_to_right"] | is_plain["spread"]).all()
  share = is_plain["left_to_right"].mean()
  assert abs(share - left_to_right) <= 4 * np.sqrt(left_to_right * (1 - left_to_right) / rows)


def test_loss_counts_only_hidden_positions():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 8, 32)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 32, (2, 8)), jnp.int32)
  hidden = jnp.asarray(rng.random((2, 8)) < 0.5)
  metrics = objective.hidden_cross_entropy(logits, targets, hidden)
  # Changing logits and targets anywhere outside `hidden` changes nothing.
  noise = jnp.asarray(rng.normal(size=(2, 8, 32)) * 5, jnp.float32)
  other_logits = jnp.where(hidden[..., None], logits, noise)
  other_targets = jnp.where(hidden, targets, (targets + 7) % 32)
  changed = objective.hidden_cross_entropy(other_logits, other_targets, hidden)
  np.testing.assert_allclose(changed.compute()["loss"], metrics.compute()["loss"], rtol=1e-6)
  np.testing.assert_allclose(changed.compute()["accuracy"], metrics.compute()["accuracy"])
  # And it is the plain mean cross-entropy over hidden positions.
  log_probs = jax.nn.log_softmax(logits)
  nll = -np.take_along_axis(np.asarray(log_probs), np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(metrics.compute()["loss"], nll[np.asarray(hidden)].mean(), rtol=1e-5)
  assert int(metrics.loss.count) == int(hidden.sum())


def _batch(lengths, n=12, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, CFG.vocab_size, (len(lengths), n)).astype(np.int32)
  valid = np.asarray(_valid(lengths, n))
  return {"tokens": jnp.asarray(np.where(valid, tokens, 0)), "valid": jnp.asarray(valid)}


def test_any_order_loss_matches_a_manual_forward():
  params = init_params(CFG, jax.random.key(1))
  batch = _batch([12, 9, 5])
  masking = objective.MaskingConfig(min_rate=0.2, max_rate=0.8)
  rng = jax.random.key(2)
  loss, metrics = jax.jit(lambda p, b: objective.any_order_loss(
      p, b, rng, model_cfg=CFG, masking=masking, deterministic=True))(params, batch)

  @jax.jit
  def by_hand(params, batch):  # the same draws, rebuilt step by step
    order_rng, _ = jax.random.split(rng)
    rate_rng, hide_rng = jax.random.split(order_rng)
    rates = objective.sample_rates(rate_rng, 3, 0.2, 0.8)
    order = objective.make_order(hide_rng, batch["valid"], rates)
    logits = ASARM(CFG).apply({"params": params}, batch["tokens"], order.ranks, order.num_prompt)
    return rates, order, jax.nn.log_softmax(logits)

  rates, order, log_probs = by_hand(params, batch)
  nll = -np.take_along_axis(np.asarray(log_probs), np.asarray(batch["tokens"])[..., None],
                            -1)[..., 0]
  hidden = np.asarray(order.hidden)
  np.testing.assert_allclose(loss, nll[hidden].mean(), rtol=1e-5)
  assert int(metrics.loss.count) == hidden.sum()
  np.testing.assert_array_equal(hidden.sum(-1), objective.num_hidden_for(batch["valid"], rates))


def test_padding_is_never_hidden_and_cannot_change_the_loss():
  params = init_params(CFG, jax.random.key(1))
  batch = _batch([12, 7, 0])
  masking = objective.MaskingConfig(min_rate=0.5, max_rate=1.0)
  rng = jax.random.key(3)
  loss_fn = jax.jit(lambda b: objective.any_order_loss(params, b, rng, model_cfg=CFG,
                                                       masking=masking, deterministic=True))
  loss, metrics = loss_fn(batch)
  other = dict(batch, tokens=jnp.where(batch["valid"], batch["tokens"], 17))
  other_loss, other_metrics = loss_fn(other)
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  assert int(other_metrics.loss.count) == int(metrics.loss.count)
  order = objective.draw_order(jax.random.split(rng)[0], batch["valid"], masking)
  assert not np.any(np.asarray(order.hidden) & ~np.asarray(batch["valid"]))
  assert int(order.hidden[2].sum()) == 0  # an all-padding row contributes nothing


def test_loss_is_differentiable_and_jittable():
  params = init_params(CFG, jax.random.key(1))
  batch = _batch([12, 10])
  masking = objective.MaskingConfig(hidden_order="random")
  grads = jax.jit(jax.grad(lambda p: objective.any_order_loss(
      p, batch, jax.random.key(0), model_cfg=CFG, masking=masking)[0]))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

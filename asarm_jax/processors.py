"""Logit processing shared by every sampler: banned ids, temperature, top-k, top-p.

Speculative sampling is exact only if the draft law p and the verify law q are produced by the
*same* transform of their logits, so both passes call `probabilities` with the same `SamplingConfig`.
The config is a frozen, hashable dataclass: pass it as a static argument under `jax.jit`; the code
branches on it in Python and never on traced values.

Order of the transforms (all in float32):
  1. banned ids (e.g. the mask token) get probability exactly 0;
  2. temperature: logits / T, or with T == 0 a one-hot at the argmax (lowest id on ties);
  3. top-k: keep the k most likely tokens;
  4. top-p: keep the smallest set of most likely tokens whose mass is >= top_p (at least one);
  5. renormalise.

Ties: candidates are ranked by logit, descending, and equal logits by token id, ascending. Top-k
keeps exactly the first k of that ranking (so a tie at the k-th value keeps the lower ids), and top-p
walks the same ranking. The result is deterministic and identical for every row of a batch.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import backend


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static description of how logits become a sampling distribution.

  Attributes:
    temperature: divides the logits; 0 means greedy (a one-hot at the argmax).
    top_k: keep only the k most likely tokens; 0 turns it off.
    top_p: nucleus mass in (0, 1]; 1 turns it off.
    banned_ids: token ids that are never produced (at least the mask token).
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  banned_ids: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ("temperature", "top_p"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number; got {value!r}")
      object.__setattr__(self, name, float(value))
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)):
      raise ValueError(f"top_k must be an integer (0 = off), got {self.top_k!r}")
    object.__setattr__(self, "top_k", int(self.top_k))
    if not math.isfinite(self.temperature) or self.temperature < 0:
      raise ValueError(
          f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
    if not 0 < self.top_p <= 1:  # Also rejects NaN.
      raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
    # Accept any iterable of ids but store a sorted tuple, so equal configs hash equally.
    try:
      ids = {int(i) for i in self.banned_ids}
    except (TypeError, ValueError) as e:
      raise ValueError(f"banned_ids must be token ids (integers); got {self.banned_ids!r}") from e
    object.__setattr__(self, "banned_ids", tuple(sorted(ids)))

  @property
  def greedy(self) -> bool:
    """Whether sampling is deterministic (temperature 0)."""
    return self.temperature == 0

  def validate(self, vocab_size: int) -> None:
    """Raises ValueError, naming the offending argument, if unusable with `vocab_size` tokens (the
    checks that need V; the others ran when the config was made)."""
    if not 0 <= self.top_k <= vocab_size:
      raise ValueError(f"top_k must be in [0, {vocab_size}] (0 = off), got {self.top_k}")
    bad = [i for i in self.banned_ids if not 0 <= i < vocab_size]
    if bad:
      raise ValueError(f"banned_ids must lie in [0, {vocab_size}), got out-of-range ids {bad}")
    if len(self.banned_ids) >= vocab_size:
      raise ValueError(
          f"banned_ids bans all {vocab_size} tokens; at least one token must stay allowed")


def cumulative_sum(x: jax.Array, block: int = 64) -> jax.Array:
  """Inclusive cumulative sum over the last axis [..., V].

  Where `backend.current().blocked_cumsum` (XLA's CPU backend, whose `jnp.cumsum` costs O(V^2) per
  row), it sums within blocks of `block` entries, then adds the running total of the blocks before:
  O(V * block + (V / block)^2). Elsewhere it is `jnp.cumsum`.
  """
  length = x.shape[-1]
  if length <= block or not backend.current().blocked_cumsum:
    return jnp.cumsum(x, axis=-1)
  num_blocks = -(-length // block)
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, num_blocks * block - length)])
  blocks = padded.reshape(*x.shape[:-1], num_blocks, block)  # [..., V / block, block]
  within = jnp.cumsum(blocks, axis=-1)  # [..., V / block, block]
  before = jnp.cumsum(within[..., -1], axis=-1) - within[..., -1]  # [..., V / block]
  return (within + before[..., None]).reshape(padded.shape)[..., :length]


def _rank_descending(logits: jax.Array) -> jax.Array:
  """Token ids [..., V] ordered by logit, descending; equal logits by ascending id."""
  # Canonicalise -0.0 to 0.0: the sort's total order would otherwise separate them.
  canonical = jnp.where(logits == 0, 0.0, logits)
  return jnp.argsort(-canonical, axis=-1, stable=True)


def _truncation_mask(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Boolean mask [..., V] of the tokens that survive top-k and top-p."""
  vocab_size = logits.shape[-1]
  order = _rank_descending(logits)  # [..., V]
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)  # [..., V]
  keep_sorted = jnp.ones(sorted_logits.shape, dtype=bool)  # [..., V]
  if cfg.top_k:
    keep_sorted = jnp.broadcast_to(jnp.arange(vocab_size) < cfg.top_k, keep_sorted.shape)
  if cfg.top_p < 1:
    sorted_probs = jax.nn.softmax(jnp.where(keep_sorted, sorted_logits, -jnp.inf), axis=-1)
    cumulative = cumulative_sum(sorted_probs)  # [..., V]
    mass_before = jnp.concatenate(
        [jnp.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], axis=-1)  # [..., V]
    keep_sorted = keep_sorted & (mass_before < cfg.top_p)
  # Scatter the sorted-order mask back to token order.
  return jnp.put_along_axis(
      jnp.zeros(keep_sorted.shape, dtype=bool), order, keep_sorted, axis=-1, inplace=False)


def probabilities(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Turns logits into the sampling distribution described by `cfg`.

  Args:
    logits: [..., V] any float dtype; computed in float32.
    cfg: static sampling configuration, validated against V (`SamplingConfig.validate`).

  Returns:
    [..., V] float32 probabilities summing to 1 over the last axis, exactly 0 on banned and
    truncated tokens.
  """
  vocab_size = logits.shape[-1]
  logits = logits.astype(jnp.float32)  # [..., V]
  if cfg.banned_ids:
    banned = np.zeros(vocab_size, dtype=bool)
    banned[list(cfg.banned_ids)] = True
    logits = jnp.where(banned, -jnp.inf, logits)
  if cfg.greedy:
    return jax.nn.one_hot(jnp.argmax(logits, axis=-1), vocab_size, dtype=jnp.float32)
  logits = logits / jnp.float32(cfg.temperature)
  if cfg.top_k or cfg.top_p < 1:
    logits = jnp.where(_truncation_mask(logits, cfg), logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def log_probabilities(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Log of `probabilities(logits, cfg)`: [..., V] float32, -inf where the probability is 0."""
  return jnp.log(probabilities(logits, cfg))


def sample_from(key: jax.Array, probs: jax.Array) -> jax.Array:
  """Draws one token id per row of `probs` [..., V]; zero-probability tokens are never drawn.

  Inverse-CDF sampling: one uniform per row (not one Gumbel variate per token, whose random bits
  cost more than the rest of a cached forward at large batch).

  Returns:
    [...] int32 token ids.
  """
  return inverse_cdf(jax.random.uniform(key, probs.shape[:-1], jnp.float32), probs)


def inverse_cdf(u: jax.Array, probs: jax.Array, block: int = 64) -> jax.Array:
  """The token whose slice of the cumulative distribution holds u * (total mass).

  Two levels, so that no cumulative sum runs over the whole vocabulary: the block of `block`
  tokens whose slice holds the target (cumulative sum of the V / block block masses), then the
  token within that block (a cumulative sum of its `block` entries, offset by the mass of the
  blocks before it). O(V + (V / block)^2 + block^2) per row, against O(V * block) for the full
  blocked cumulative sum on the CPU.

  Args:
    u: [...] float32 in [0, 1).
    probs: [..., V] non-negative, not all zero.
    block: tokens per block.

  Returns:
    [...] int32: token i with cdf[i-1] <= u * total < cdf[i], so a zero-probability token (an
    empty slice) is never returned; rounding at a block's or the vocabulary's top end falls back
    to the last token with positive probability of that block.
  """
  probs = probs.astype(jnp.float32)
  vocab_size = probs.shape[-1]
  num_blocks = -(-vocab_size // block)
  padded = jnp.pad(probs, [(0, 0)] * (probs.ndim - 1) + [(0, num_blocks * block - vocab_size)])
  blocks = padded.reshape(*probs.shape[:-1], num_blocks, block)  # [..., V / block, block]
  block_mass = jnp.sum(blocks, axis=-1)  # [..., V / block]
  block_cdf = cumulative_sum(block_mass)  # [..., V / block]
  target = u[..., None] * block_cdf[..., -1:]  # [..., 1]
  chosen = jnp.minimum(jnp.sum(block_cdf <= target, axis=-1), _last_positive(block_mass))  # [...]
  mass_before = jnp.take_along_axis(block_cdf, jnp.maximum(chosen - 1, 0)[..., None], axis=-1)
  mass_before = jnp.where(chosen[..., None] > 0, mass_before, 0.0)  # [..., 1]
  within = jnp.take_along_axis(blocks, chosen[..., None, None], axis=-2)[..., 0, :]  # [..., block]
  cdf = mass_before + jnp.cumsum(within, axis=-1)  # [..., block]
  offset = jnp.minimum(jnp.sum(cdf <= target, axis=-1), _last_positive(within))  # [...]
  return (chosen * block + offset).astype(jnp.int32)


def _last_positive(values: jax.Array) -> jax.Array:
  """The index of the last positive entry along the last axis: [..., L] -> int32 [...]."""
  length = values.shape[-1]
  return (length - 1 - jnp.argmax((values > 0)[..., ::-1], axis=-1)).astype(jnp.int32)

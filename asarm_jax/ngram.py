"""The context n-gram drafter: proposals from bigram counts of the tokens a row has decided.

The table of a row is its own token buffer: the bigram (a, b) is counted once for every pair of
neighbouring positions (i, i + 1) that are both decided (prompt or generated) and hold a, b. Nothing
is carried between rounds, so the counts always cover every token decided so far, at a fixed cost
of O(B * K * N) per round and no [V, V] array.

The proposal for the position at slot j of a round is drawn from
  - the bigram row of its left neighbour's token, where that neighbour is decided or was drafted at
    an earlier slot of this round and the row has counts;
  - else the unigram counts of the decided tokens;
  - else the uniform law over the allowed tokens (an empty table).
Banned tokens get probability 0 at every level. The sampler records each law with its proposal and
tests it with min(1, q/p) and the residual, so any such law gives exact samples (speculation.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _normalized(counts: jax.Array) -> tuple[jax.Array, jax.Array]:
  """counts [..., V] -> (law [..., V], has_mass bool [...])."""
  mass = jnp.sum(counts, axis=-1, keepdims=True)
  return counts / jnp.where(mass > 0, mass, 1.0), mass[..., 0] > 0


def _row_counts(values: jax.Array, weights: jax.Array, vocab_size: int) -> jax.Array:
  """Per-row histograms: values int32 [B, M], weights float32 [B, M] -> float32 [B, V]."""
  rows = jnp.arange(values.shape[0])[:, None]
  return jnp.zeros((values.shape[0], vocab_size), jnp.float32).at[rows, values].add(weights)


def draft(keys: jax.Array, tokens: jax.Array, decided: jax.Array, positions: jax.Array,
          in_round: jax.Array, allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Draws one round's proposals slot by slot from the context n-gram laws.

  Args:
    keys: PRNG key [B], one per row.
    tokens: int32 [B, N]: decided tokens (other positions are ignored).
    decided: bool [B, N]: the positions whose tokens are decided.
    positions: int32 [B, K]: the position of each slot.
    in_round: bool [B, K]: slots the round drafts (later slots see only these as drafted).
    allowed: bool [V]: tokens that may be proposed (the sampler's banned ids are False).

  Returns:
    (drafts int32 [B, K], laws float32 [B, K, V]): each draft and the law it was drawn from.
  """
  batch, length = tokens.shape
  vocab_size = allowed.shape[0]
  weight = allowed.astype(jnp.float32)  # [V]
  tokens = jnp.clip(tokens, 0, vocab_size - 1)
  pair = decided[:, :-1] & decided[:, 1:]  # [B, N-1]: bigram (tokens[i], tokens[i+1]) counted
  unigram, has_unigram = _normalized(
      _row_counts(tokens, decided.astype(jnp.float32), vocab_size) * weight)  # [B, V], [B]
  uniform = jnp.broadcast_to(weight / jnp.sum(weight), (batch, vocab_size))
  fallback = jnp.where(has_unigram[:, None], unigram, uniform)  # [B, V]
  rows = jnp.arange(batch)
  known, context_tokens = decided, tokens  # drafts of earlier slots join as contexts
  drafts, laws = [], []
  for slot in range(positions.shape[1]):
    position = positions[:, slot]  # [B]
    left = jnp.maximum(position - 1, 0)
    has_context = (position > 0) & known[rows, left]  # [B]
    matches = pair & (tokens[:, :-1] == context_tokens[rows, left][:, None])  # [B, N-1]
    bigram, has_bigram = _normalized(
        _row_counts(tokens[:, 1:], matches.astype(jnp.float32), vocab_size) * weight)
    law = jnp.where((has_context & has_bigram)[:, None], bigram, fallback)  # [B, V]
    token = jax.vmap(jax.random.categorical)(
        jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, slot),
        jnp.log(law)).astype(jnp.int32)  # [B]
    write = jnp.where(in_round[:, slot], position, length)
    known = known.at[rows, write].set(True, mode="drop")
    context_tokens = context_tokens.at[rows, write].set(token, mode="drop")
    drafts.append(token)
    laws.append(law)
  return jnp.stack(drafts, axis=1), jnp.stack(laws, axis=1)

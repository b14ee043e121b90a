"""The order-aware content key/value cache, and which rows a cached forward must compute.

In an AS-ARM a decided token's content-stream state at every layer depends only on tokens of lower
rank (and the prompt), so once computed its keys and values never change. The cache stores them by
position. Which entries are valid is tracked by the caller as a per-row count `num_cached`: the
entries of the positions of rank < num_cached hold the keys/values of their current (decided)
tokens. Entries at other positions may be stale (a rejected draft) or empty.

A cached forward with horizon h (every row it computes sees only ranks < h, content rows at most
rank <= h - 1) is exact when its new content rows are the ranks [num_cached, h): every visible key
is then either a valid cache entry or one of the new rows, which `ASARM.extend` writes before any
row attends. Stale entries, all at ranks >= num_cached, are never visible: those below h are
overwritten first, those at or above h are masked. The prompt block is cached at once (num_cached is
0 or at least num_prompt), since its rows see each other. `content_rows` plans these rows and
`row_masks` builds the visibility of the new rows from ranks alone (never a [B, N, N] mask).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from asarm_jax import masks as masks_lib


@flax.struct.dataclass
class KVCache:
  """Per-layer content keys and values, indexed by position, and the relative-position keys.

  One array per layer (not one stacked array), so a forward writes its new rows into each layer's
  buffer in place and reads it without slicing or copying.
  """
  keys: tuple[jax.Array, ...]    # L x [B, H, D, N] (transposed: see RelativeAttention.keys_values)
  values: tuple[jax.Array, ...]  # L x [B, H, N, D]
  # L x [H, 2N-1, D]: each layer's projected relative-position embeddings (they depend only on the
  # parameters and N); None: the forward computes them.
  relative_keys: tuple[jax.Array, ...] | None = None
  # float32 [M, V]: the LM head's weight (the tied embedding) transposed, for forwards of several
  # query rows (`ASARM.init_cache`); None: the forward reads the embedding [V, M] itself.
  output_weight: jax.Array | None = None

  @classmethod
  def zeros(cls, n_layers: int, batch: int, length: int, n_heads: int, d_head: int,
            dtype=jnp.float32) -> "KVCache":
    """An empty cache for `batch` rows of `length` positions."""
    return cls(keys=tuple(jnp.zeros((batch, n_heads, d_head, length), dtype)
                          for _ in range(n_layers)),
               values=tuple(jnp.zeros((batch, n_heads, length, d_head), dtype)
                            for _ in range(n_layers)))

  @property
  def length(self) -> int:
    return self.values[0].shape[2]


def content_rows(by_rank: jax.Array, num_cached: jax.Array, horizon: jax.Array, num_rows: int,
                 active: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The new content rows of a cached forward: ranks [num_cached, horizon), padded to `num_rows`.

  Args:
    by_rank: int32 [B, N], the position of each rank (`masks.positions_by_rank`).
    num_cached: int32 [B]; ranks below it have valid cache entries.
    horizon: int32 [B]; the forward's rows see only ranks below it.
    num_rows: static S >= max(horizon - num_cached) over active rows (the caller's bound).
    active: optional bool [B]; inactive rows compute padding only (their cache stays untouched).

  Returns:
    (positions int32 [B, S], ranks int32 [B, S]): padding rows have position N (computed, never
    written by `ASARM.extend`) and rank N.
  """
  length = by_rank.shape[1]
  ranks = num_cached[:, None] + jnp.arange(num_rows, dtype=jnp.int32)[None, :]  # [B, S]
  new = ranks < horizon[:, None]
  if active is not None:
    new = new & active[:, None]
  positions = jnp.take_along_axis(by_rank, jnp.minimum(ranks, length - 1), axis=1)
  return jnp.where(new, positions, length), jnp.where(new, ranks, length)


def row_masks(ranks: jax.Array, num_prompt: jax.Array, horizon: jax.Array, content_ranks: jax.Array,
              query_ranks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Visibility of the rows of a forward with the given horizon, over all N keys.

  A content row of rank r < horizon sees the ranks <= r (and the prompt block); a query row of rank
  r sees the ranks < min(r, horizon): the density row when r < horizon, the parallel-draft row of
  step `horizon` otherwise. These are the rows of `masks.draft_masks(ranks, horizon, num_prompt)`.

  Args:
    ranks: int32 [B, N], the order.
    num_prompt: int32 [B].
    horizon: int32 [B], >= num_prompt.
    content_ranks: int32 [B, S], ranks of the content rows (padding rows: any value).
    query_ranks: int32 [B, Q], ranks of the query rows.

  Returns:
    (content_mask bool [B, S, N], query_mask bool [B, Q, N]).
  """
  length = ranks.shape[1]
  key_ranks = masks_lib.draft_ranks(ranks, horizon)  # [B, N]: undecided at N
  content = masks_lib.visibility(jnp.minimum(content_ranks, length), key_ranks, num_prompt,
                                 inclusive=True)
  query_row_ranks = jnp.where(query_ranks < horizon[:, None], query_ranks, length)
  query = masks_lib.visibility(query_row_ranks, key_ranks, num_prompt, inclusive=False)
  return content, query

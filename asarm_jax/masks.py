"""Generation orders and the attention masks they induce.

An order is given by `ranks` int32 [B, N]: `ranks[b, i]` is the step at which position i of row b is
decided; each row is a permutation of 0..N-1. Positions with rank < `num_prompt` form the prompt: they
are known up front and see each other fully, in both streams.

Masks are bool with True = "may attend". For a row position i and a key position j:
- content stream: i sees j iff rank[j] <= rank[i], or both are prompt positions;
- query stream:   i sees j iff rank[j] <  rank[i], or both are prompt positions.
(XLNet / Hugging Face use the opposite convention: `perm_mask = 1` means "may NOT attend".)

Everything here except `validate_order` is pure jnp and safe under jit and vmap.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _as_column(num: jax.Array | int, batch: int) -> jax.Array:
  """Broadcasts a scalar or [B] count to int32 [B, 1]."""
  return jnp.broadcast_to(jnp.asarray(num, jnp.int32), (batch,))[:, None]


def visibility(row_ranks: jax.Array, key_ranks: jax.Array, num_prompt: jax.Array | int,
               *, inclusive: bool) -> jax.Array:
  """Which keys each row may attend to, from ranks alone.

  Args:
    row_ranks: int32 [B, R], ranks of the rows (attending positions).
    key_ranks: int32 [B, N], ranks of every key position.
    num_prompt: int32 scalar or [B]; ranks below it form the mutually visible prompt block.
    inclusive: True for the content stream (rank[j] <= rank[i]), False for the query stream (<).

  Returns:
    bool [B, R, N], True where row r may attend to key j.
  """
  rows = row_ranks[:, :, None]  # [B, R, 1]
  keys = key_ranks[:, None, :]  # [B, 1, N]
  by_rank = keys <= rows if inclusive else keys < rows
  prompt = _as_column(num_prompt, row_ranks.shape[0])[:, :, None]  # [B, 1, 1]
  in_prompt_block = (rows < prompt) & (keys < prompt)
  return by_rank | in_prompt_block


def density_masks(ranks: jax.Array, num_prompt: jax.Array | int) -> tuple[jax.Array, jax.Array]:
  """Joint-density masks: every position conditioned on all positions of lower rank.

  Args:
    ranks: int32 [B, N].
    num_prompt: int32 scalar or [B].

  Returns:
    (content_mask, query_mask), each bool [B, N, N].
  """
  content = visibility(ranks, ranks, num_prompt, inclusive=True)
  query = visibility(ranks, ranks, num_prompt, inclusive=False)
  return content, query


def draft_ranks(ranks: jax.Array, num_decided: jax.Array | int) -> jax.Array:
  """Ranks as the parallel draft sees them: every undecided position is moved to rank N.

  With these ranks an undecided position's query stream sees exactly the decided positions
  (rank < num_decided): no other undecided position and not itself.

  Args:
    ranks: int32 [B, N].
    num_decided: int32 scalar or [B].

  Returns:
    int32 [B, N] (not a permutation: undecided positions tie at N).
  """
  decided = ranks < _as_column(num_decided, ranks.shape[0])
  return jnp.where(decided, ranks, ranks.shape[1])


def draft_masks(ranks: jax.Array, num_decided: jax.Array | int,
                num_prompt: jax.Array | int) -> tuple[jax.Array, jax.Array]:
  """Masks of the parallel draft forward at step `num_decided` (>= num_prompt).

  Decided positions keep their density-mask rows, so the draft's conditional at rank num_decided is
  identical to the one the density masks give.

  Returns:
    (content_mask, query_mask), each bool [B, N, N].
  """
  return density_masks(draft_ranks(ranks, num_decided), num_prompt)


def positions_by_rank(ranks: jax.Array) -> jax.Array:
  """Inverse permutation: int32 [B, N] whose [b, r] is the position decided at rank r."""
  return jnp.argsort(ranks, axis=-1).astype(jnp.int32)


def ranks_from_sort_keys(keys: jax.Array) -> jax.Array:
  """Rank of every entry when a row is sorted by `keys` [B, N] (ascending, stable)."""
  order = jnp.argsort(keys, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1).astype(jnp.int32)


def left_to_right_ranks(batch: int, length: int) -> jax.Array:
  """The ordinary left-to-right order: int32 [B, N] with ranks[b, i] = i."""
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


ORDERS = ("left_to_right", "random", "spread")
ORDER_HELP = ("left_to_right: the hidden positions left to right (the paper's order); random: a "
              "uniformly random order (seeded); spread: far-apart positions first, then the gaps "
              "between them (bit-reversed order of the hidden positions)")


def check_order_name(order: str) -> None:
  """Raises ValueError unless `order` is one of `ORDERS`."""
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}; got {order!r}")


def _bit_reversed(values: jax.Array, bits: int) -> jax.Array:
  """The lowest `bits` bits of int32 `values` in reverse order."""
  reversed_values = jnp.zeros_like(values)
  for bit in range(bits):
    reversed_values = reversed_values | (((values >> bit) & 1) << (bits - 1 - bit))
  return reversed_values


def _within_hidden_keys(order: str, hidden: jax.Array, key: jax.Array | None) -> jax.Array:
  """Sort keys [B, N] (compared only among a row's hidden positions) of the hidden block."""
  if order == "random":
    if key is None:
      raise ValueError("order 'random' needs a PRNG key")
    return jax.random.uniform(key, hidden.shape, jnp.float32)
  if order == "spread":
    index = jnp.cumsum(hidden, axis=-1, dtype=jnp.int32) - 1  # [B, N]: index among hidden
    bits = max(1, (hidden.shape[-1] - 1).bit_length())
    return _bit_reversed(jnp.maximum(index, 0), bits)
  return jnp.broadcast_to(jnp.arange(hidden.shape[-1], dtype=jnp.int32), hidden.shape)


def positions_in_block_order(block: jax.Array, keys: jax.Array) -> jax.Array:
  """Each row's positions sorted by `block` [B, N], then `keys` [B, N], then position: int32
  [B, N] (a full-precision sort: no ties of keys squeezed into one float). As ranks they are
  `by_rank` (`positions_by_rank`'s output)."""
  positions = jnp.broadcast_to(jnp.arange(block.shape[-1]), block.shape)
  return jnp.lexsort((positions, keys, block), axis=-1).astype(jnp.int32)


def order_ranks(order: str, is_prompt: jax.Array, *, valid: jax.Array | None = None,
                key: jax.Array | None = None) -> jax.Array:
  """Ranks of a named order (`ORDERS`): prompt first (left to right), then the hidden positions in
  `order`, then the invalid (padding) positions left to right.

  Args:
    order: one of `ORDERS` (see `ORDER_HELP`).
    is_prompt: bool [B, N].
    valid: optional bool [B, N]; False marks padding (never in the prompt). Default: all valid.
    key: PRNG key, needed for 'random'.

  Returns:
    int32 [B, N], a permutation per row; the prompt occupies ranks 0..sum(is_prompt)-1.
  """
  check_order_name(order)
  valid = jnp.ones_like(is_prompt) if valid is None else valid
  hidden = valid & ~is_prompt
  block = jnp.where(is_prompt & valid, 0, jnp.where(hidden, 1, 2))  # [B, N]: prompt, hidden, pad
  within = jnp.where(hidden, _within_hidden_keys(order, hidden, key), 0)
  return positions_by_rank(positions_in_block_order(block, within))  # the inverse permutation


def infill_ranks(is_prompt: jax.Array) -> jax.Array:
  """The paper's infill order: prompt positions first, then the rest, each left to right.

  Args:
    is_prompt: bool [B, N].

  Returns:
    int32 [B, N]; the prompt occupies ranks 0..sum(is_prompt)-1.
  """
  return order_ranks("left_to_right", is_prompt)


def random_ranks(key: jax.Array, is_prompt: jax.Array) -> jax.Array:
  """Prompt first (left to right), then the other positions in a uniformly random order.

  Args:
    key: PRNG key.
    is_prompt: bool [B, N].

  Returns:
    int32 [B, N].
  """
  return order_ranks("random", is_prompt, key=key)


def num_prompt_of(is_prompt: jax.Array) -> jax.Array:
  """int32 [B]: how many prompt positions each row has."""
  return jnp.sum(is_prompt, axis=-1, dtype=jnp.int32)


def validate_order(ranks, num_prompt, *, seq_len: int | None = None,
                   allow_full_prompt: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Checks an order on the host and returns it as numpy (ranks int32 [B, N], num_prompt int32 [B]).

  Raises:
    ValueError: naming the problem — wrong rank or dtype, a row that is not a permutation of 0..N-1,
      num_prompt of the wrong shape or out of range, or N different from `seq_len`.
  """
  try:
    ranks_np = np.asarray(ranks)
  except ValueError as e:  # e.g. ragged nested lists
    raise ValueError(f"ranks must be an integer array of shape [batch, length]; got "
                     f"{ranks!r}") from e
  if ranks_np.ndim != 2:
    raise ValueError(f"ranks must have shape [batch, length]; got shape {ranks_np.shape}")
  if not np.issubdtype(ranks_np.dtype, np.integer):
    raise ValueError(f"ranks must be integers; got dtype {ranks_np.dtype}")
  batch, length = ranks_np.shape
  if seq_len is not None and length != seq_len:
    raise ValueError(f"ranks has length {length} but tokens have length {seq_len}")
  expected = np.arange(length)
  for row in range(batch):
    if not np.array_equal(np.sort(ranks_np[row]), expected):
      raise ValueError(
          f"ranks[{row}] is not a permutation of 0..{length - 1}: {ranks_np[row].tolist()}")
  try:
    prompt_np = np.asarray(num_prompt)
  except ValueError as e:
    raise ValueError(f"num_prompt must be an integer or {batch} integers; got "
                     f"{num_prompt!r}") from e
  if prompt_np.ndim == 0:
    prompt_np = np.full((batch,), prompt_np)
  if prompt_np.shape != (batch,):
    raise ValueError(f"num_prompt must be a scalar or shape [{batch}]; got shape {prompt_np.shape}")
  if not np.issubdtype(prompt_np.dtype, np.integer):
    raise ValueError(f"num_prompt must be an integer; got dtype {prompt_np.dtype}")
  upper = length if allow_full_prompt else length - 1
  bad = (prompt_np < 0) | (prompt_np > upper)
  if bad.any():
    row = int(np.argmax(bad))
    raise ValueError(f"num_prompt[{row}] = {int(prompt_np[row])} is out of range [0, {upper}] "
                     f"for sequences of length {length}")
  return ranks_np.astype(np.int32), prompt_np.astype(np.int32)

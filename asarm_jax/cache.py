"""The order-aware content key/value cache.

In an AS-ARM a decided token's content-stream state at every layer depends only on tokens of lower rank
(and the prompt), so once computed its keys and values never change. The cache stores them by position;
which entries are valid is tracked by the caller (e.g. ranks below a per-row counter).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  """Per-layer content keys and values, indexed by position."""
  keys: jax.Array    # [L, B, N, H, D]
  values: jax.Array  # [L, B, N, H, D]

  @classmethod
  def zeros(cls, n_layers: int, batch: int, length: int, n_heads: int, d_head: int,
            dtype=jnp.float32) -> "KVCache":
    """An empty cache for `batch` rows of `length` positions."""
    shape = (n_layers, batch, length, n_heads, d_head)
    return cls(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype))

  @property
  def length(self) -> int:
    return self.keys.shape[2]

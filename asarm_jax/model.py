"""The Any-Subset Autoregressive Model: an XLNet-style two-stream transformer in Flax linen.

Two streams run through every layer with shared weights:
- the content stream h starts from the token embeddings; row i attends under the content mask;
- the query stream g starts from one learned `mask_emb` vector; row i attends under the query mask and
  so never sees its own token. Logits are read from the query stream.
Both attend over the same content keys/values with XLNet's relative positional attention
(content term (q + r_w_bias)·k_j, position term (q + r_r_bias)·W_r R(i - j)), followed by post-LN
residual blocks and a position-wise feed-forward. The LM head is the tied embedding plus a bias.

A query row that may attend to nothing (the first generated token when the prompt is empty) gets a zero
attention output, so it depends only on the learned mask embedding: its distribution is the same at
every position. Every other row attends to at least one key.

Every forward is written over *rows*: content rows at `content_positions` and query rows at
`query_positions`, attending over keys at all N positions. The full forward computes all N content rows;
the cached forward (`extend`) computes only new rows and reads the other keys/values from a `KVCache`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import backend, config_util
from asarm_jax import masks as masks_lib
from asarm_jax.cache import KVCache

_MASKED_SCORE = -1e30
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # The exact GELU, x * Phi(x), written with erf as torch and XLNet write it: on XLA's CPU backend
    # jax.nn.gelu's erfc form cost twice as much (43 vs 82 us for 7 rows of 512 in a profile of a
    # speculative round, where it was the largest op).
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0)))),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_INT_FIELDS = ("vocab_size", "mask_token_id", "d_model", "n_layers", "n_heads", "d_head", "d_inner",
               "max_len")
_FLOAT_FIELDS = ("layer_norm_eps", "dropout", "initializer_range")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of an AS-ARM (names follow XLNet's config)."""
  vocab_size: int
  mask_token_id: int
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  d_head: int = 64
  d_inner: int = 1024
  ff_activation: str = "gelu"
  layer_norm_eps: float = 1e-12
  dropout: float = 0.0
  max_len: int = 512
  initializer_range: float = 0.02
  dtype: str = "float32"        # activations / matmul inputs
  param_dtype: str = "float32"  # stored parameters

  def __post_init__(self):
    for name in _INT_FIELDS:
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"ModelConfig.{name} = {value!r} is invalid: it must be an integer")
    for name in _FLOAT_FIELDS:
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
          or not math.isfinite(value)):
        raise ValueError(f"ModelConfig.{name} = {value!r} is invalid: it must be a finite number")
    checks = {
        "vocab_size": self.vocab_size > 0,
        "d_model": self.d_model > 0 and self.d_model % 2 == 0,
        "n_layers": self.n_layers > 0,
        "n_heads": self.n_heads > 0,
        "d_head": self.d_head > 0,
        "d_inner": self.d_inner > 0,
        "max_len": self.max_len > 0,
        "dropout": 0.0 <= self.dropout < 1.0,
        "layer_norm_eps": self.layer_norm_eps > 0,
        "initializer_range": self.initializer_range >= 0,
        "mask_token_id": 0 <= self.mask_token_id < self.vocab_size,
        "ff_activation": self.ff_activation in _ACTIVATIONS,
        "dtype": self.dtype in _DTYPES,
        "param_dtype": self.param_dtype in _DTYPES,
    }
    for name, ok in checks.items():
      if not ok:
        raise ValueError(f"ModelConfig.{name} = {getattr(self, name)!r} is invalid "
                         "(sizes must be positive, d_model even, 0 <= dropout < 1, "
                         "layer_norm_eps > 0, initializer_range >= 0, "
                         f"activations {sorted(_ACTIVATIONS)}, dtypes {sorted(_DTYPES)}, "
                         "0 <= mask_token_id < vocab_size)")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def storage_dtype(self):
    return _DTYPES[self.param_dtype]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "ModelConfig":
    """Builds a config from a dict, rejecting unknown keys by name."""
    return config_util.from_dict(cls, values, owner="ModelConfig")


def _normal(cfg: ModelConfig, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes)


def _zeros(axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def sinusoid(distances: jax.Array, d_model: int) -> jax.Array:
  """XLNet's sinusoidal embedding of relative distances: float32 [..., d_model] = [sin | cos]."""
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))
  angles = distances.astype(jnp.float32)[..., None] * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def relative_table(length: int, d_model: int) -> jax.Array:
  """Embeddings of every relative distance of N positions: float32 [2N-1, M].

  Row t holds distance N - 1 - t (from N - 1 down to -(N - 1)).
  """
  return sinusoid(jnp.arange(length - 1, -length, -1), d_model)


class RelativeAttention(nn.Module):
  """XLNet relative multi-head attention; one instance serves both streams of a layer."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    shape = (cfg.d_model, cfg.n_heads, cfg.d_head)
    axes = ("embed", "heads", "kv")
    pdt = cfg.storage_dtype
    self.q = self.param("q", _normal(cfg, axes), shape, pdt)
    self.k = self.param("k", _normal(cfg, axes), shape, pdt)
    self.v = self.param("v", _normal(cfg, axes), shape, pdt)
    self.o = self.param("o", _normal(cfg, axes), shape, pdt)
    self.r = self.param("r", _normal(cfg, axes), shape, pdt)
    bias_shape = (cfg.n_heads, cfg.d_head)
    self.r_w_bias = self.param("r_w_bias", _normal(cfg, ("heads", "kv")), bias_shape, pdt)
    self.r_r_bias = self.param("r_r_bias", _normal(cfg, ("heads", "kv")), bias_shape, pdt)
    self.layer_norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                                   param_dtype=pdt, scale_init=nn.with_logical_partitioning(
                                       nn.initializers.ones_init(), ("embed",)),
                                   bias_init=_zeros(("embed",)))
    self.dropout = nn.Dropout(cfg.dropout)

  def _project(self, x: jax.Array, weight: jax.Array, layout: str = "bhsd") -> jax.Array:
    """Rows x [B, S, M] times weight [M, H, D], in `layout`: [B, H, S, D] by default.

    One [S, M] x [M, H*D] product against the weight viewed as [M, H*D] (a free reshape), then a
    transpose of the small result: as "bsm,mhd->bhsd", XLA's CPU backend copied the weight
    transposed (2.4 MB at XLNet-base size) for every projection of every forward.
    """
    dt = self.cfg.compute_dtype
    batch, num_rows, d_model = x.shape
    _, heads, head_dim = weight.shape
    flat = jnp.einsum("bsm,mk->bsk", x.astype(dt),
                      weight.reshape(d_model, heads * head_dim).astype(dt))  # [B, S, H*D]
    return jnp.einsum(f"bshd->{layout}", flat.reshape(batch, num_rows, heads, head_dim))

  def keys_values(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Content keys [B, H, D, S] and values [B, H, S, D] of rows h [B, S, M].

    Keys are stored transposed so that the score product is a plain [R, D] x [D, N] matrix product
    per (row, head), which reads the cache without repacking it.
    """
    return self._project(h, self.k, "bhds"), self._project(h, self.v)

  def relative_keys(self, table: jax.Array) -> jax.Array:
    """The relative-position keys W_r R of `table` [2N-1, M] (see `relative_table`): [H, 2N-1, D].

    Head-major, the layout of the per-head product in `__call__`: stored this way in the cache,
    the product reads them without a transposed copy every forward.
    """
    dt = self.cfg.compute_dtype
    return jnp.einsum("tm,mhd->htd", table.astype(dt), self.r.astype(dt))

  def __call__(self, x: jax.Array, rows: "RowLayout", keys: jax.Array, values: jax.Array,
               rel_keys: jax.Array, *, deterministic: bool) -> jax.Array:
    """Attends rows x [B, R, M] laid out by `rows` over keys [B, H, D, N] and values [B, H, N, D].

    `rel_keys` [H, 2N-1, D] are this layer's `relative_keys`. Returns the post-LN residual output
    [B, R, M].
    """
    cfg = self.cfg
    dt = cfg.compute_dtype
    q = self._project(x, self.q)  # [B, H, R, D]
    content_score = jnp.einsum("bhrd,bhdn->bhrn", q + self.r_w_bias.astype(dt)[:, None], keys,
                               preferred_element_type=jnp.float32)  # [B, H, R, N]
    # Operands in float32 where the backend lacks a bf16 x bf16 -> f32 kernel for this dot (the
    # CPU; see backend.py; they are small: R rows and the [H, 2N-1, D] table).
    operand_dt = jnp.float32 if backend.current().float32_relative_product else dt
    by_distance = jnp.einsum("bhrd,htd->bhrt",
                             (q + self.r_r_bias.astype(dt)[:, None]).astype(operand_dt),
                             rel_keys.astype(operand_dt),
                             preferred_element_type=jnp.float32)  # [B, H, R, 2N-1]
    position_score = _relative_windows(by_distance, rows.starts, keys.shape[-1])  # [B, H, R, N]
    scores = (content_score + position_score) * (cfg.d_head ** -0.5) + rows.score_bias
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(rows.attends, probs, 0.0)  # rows with no visible key -> 0
    probs = self.dropout(probs, deterministic=deterministic)
    attended = jnp.einsum("bhrn,bhnd->bhrd", probs.astype(dt), values)  # [B, H, R, D]
    # The output projection as one [R, H*D] x [H*D, M] product against o viewed as [M, H*D] (a
    # free reshape): written as "bhrd,mhd->brm", XLA's CPU backend copied o transposed (2.4 MB
    # at XLNet-base size) in every layer of every forward.
    batch, heads, num_rows, head_dim = attended.shape
    attended = attended.transpose(0, 2, 1, 3).reshape(batch, num_rows, heads * head_dim)
    out = jnp.einsum("brk,mk->brm", attended,
                     self.o.reshape(cfg.d_model, heads * head_dim).astype(dt))  # [B, R, M]
    out = self.dropout(out, deterministic=deterministic)
    return self.layer_norm(out + x.astype(dt))


def _relative_windows(by_distance: jax.Array, starts: jax.Array, length: int) -> jax.Array:
  """Row r's scores for keys 0..N-1 from its scores by distance: by_distance [B, H, R, 2N-1] at
  columns starts[b, r] + (0..N-1), as one contiguous window per row -> [B, H, R, N].

  (A window gather ran 2-3.5x faster than an element-wise take_along_axis on XLA's CPU backend.)
  """
  per_row = jax.vmap(lambda scores, start: jax.lax.dynamic_slice_in_dim(scores, start, length, 1),
                     in_axes=(1, 0), out_axes=1)  # [H, R, 2N-1], [R] -> [H, R, N]
  return jax.vmap(per_row)(by_distance, starts)


@flax.struct.dataclass
class RowLayout:
  """What every layer's attention needs to know about the rows of a forward, built once per forward
  (`RowLayout.of`) instead of once per layer."""
  starts: jax.Array      # int32 [B, R]: the relative table column of row r's distance to key 0
  score_bias: jax.Array  # float32 [B, 1, R, N]: 0 where row r may attend to key n, else -1e30
  attends: jax.Array     # bool [B, 1, R, 1]: the row may attend to at least one key

  @classmethod
  def of(cls, positions: jax.Array, mask: jax.Array) -> "RowLayout":
    """Rows at `positions` [B, R] with visibility `mask` [B, R, N]."""
    length = mask.shape[-1]
    # Column t of the relative table holds distance N - 1 - t (`relative_table`), so the distance
    # i - j of row i to key j sits at t = N - 1 - i + j: a window of N columns from N - 1 - i. A
    # padding row (position N) is clamped to the first window; its output is never used.
    return cls(starts=(length - 1) - positions,
               score_bias=jnp.where(mask, 0.0, _MASKED_SCORE)[:, None].astype(jnp.float32),
               attends=jnp.any(mask, axis=-1)[:, None, :, None])

  def rows_from(self, start: int) -> "RowLayout":
    """The layout of rows start.. only (the query rows, when `start` is the number of content
    rows)."""
    return RowLayout(starts=self.starts[:, start:], score_bias=self.score_bias[:, :, start:],
                     attends=self.attends[:, :, start:])


class FeedForward(nn.Module):
  """Position-wise feed-forward with a post-LN residual."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    dense = dict(dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
    y = nn.Dense(cfg.d_inner, kernel_init=_normal(cfg, ("embed", "mlp")),
                 bias_init=_zeros(("mlp",)), name="layer_1", **dense)(x)
    y = _ACTIVATIONS[cfg.ff_activation](y)
    y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    y = nn.Dense(cfg.d_model, kernel_init=_normal(cfg, ("mlp", "embed")),
                 bias_init=_zeros(("embed",)), name="layer_2", **dense)(y)
    y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                        param_dtype=cfg.storage_dtype, name="layer_norm",
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                ("embed",)),
                        bias_init=_zeros(("embed",)))(y + x)


class TwoStreamLayer(nn.Module):
  """One XLNet layer applied to content rows and query rows."""
  cfg: ModelConfig

  def setup(self):
    self.attention = RelativeAttention(self.cfg)
    self.ff = FeedForward(self.cfg)

  def relative_keys(self, table: jax.Array) -> jax.Array:
    return self.attention.relative_keys(table)

  def __call__(self, h, content_positions, g, rows: RowLayout, layer_keys, layer_values,
               rel_keys, *, full: bool, last: bool, deterministic: bool):
    """Advances content rows h [B, S, M] and query rows g [B, Q, M] by one layer.

    `rows` lays out the S + Q rows (content first). Keys/values of the new content rows are written
    at `content_positions` (out-of-range positions are dropped); with `full=True` the rows are all N
    positions in order and replace the keys/values. Both streams go through the shared weights as
    one block of S + Q rows (they attend over the same keys, and everything else is row-wise).
    In the `last` layer only the query rows go through attention and feed-forward: the content
    rows' keys/values are all that is used of them (logits are read from the query stream).

    Returns (h [B, S, M] (the input h in the `last` layer), g [B, Q, M], keys [B, H, D, N],
    values [B, H, N, D]).
    """
    new_keys, new_values = self.attention.keys_values(h)  # [B, H, S, D]
    if full:
      keys, values = new_keys, new_values
    else:
      batch_rows = jnp.arange(h.shape[0])[:, None]
      keys = layer_keys.at[batch_rows, :, :, content_positions].set(
          new_keys.transpose(0, 3, 1, 2).astype(layer_keys.dtype), mode="drop")
      values = layer_values.at[batch_rows, :, content_positions].set(
          new_values.transpose(0, 2, 1, 3).astype(layer_values.dtype), mode="drop")
    num_content = h.shape[1]
    if last:
      x, rows = g.astype(h.dtype), rows.rows_from(num_content)  # [B, Q, M]
    else:
      x = jnp.concatenate([h, g.astype(h.dtype)], axis=1)  # [B, S + Q, M]
    x = self.attention(x, rows, keys, values, rel_keys, deterministic=deterministic)
    x = self.ff(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    if last:
      return h, x, keys, values
    return x[:, :num_content], x[:, num_content:], keys, values


class ASARM(nn.Module):
  """Any-Subset Autoregressive Model. See the module docstring for the streams and masks."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = self.param("embedding", _normal(cfg, ("vocab", "embed")),
                                (cfg.vocab_size, cfg.d_model), cfg.storage_dtype)
    self.mask_emb = self.param("mask_emb", _normal(cfg, ("embed",)), (cfg.d_model,),
                               cfg.storage_dtype)
    self.lm_bias = self.param("lm_bias", _zeros(("vocab",)), (cfg.vocab_size,), cfg.storage_dtype)
    self.layers = [TwoStreamLayer(cfg, name=f"layer_{i}") for i in range(cfg.n_layers)]
    self.dropout = nn.Dropout(cfg.dropout)

  def __call__(self, tokens: jax.Array, ranks: jax.Array, num_prompt: jax.Array | int, *,
               deterministic: bool = True) -> jax.Array:
    """Query-stream logits float32 [B, N, V] at every position under the density masks of `ranks`.

    Args:
      tokens: int32 [B, N].
      ranks: int32 [B, N], a permutation per row (see masks.py).
      num_prompt: int32 scalar or [B].
      deterministic: False enables dropout (needs a 'dropout' rng).
    """
    content_mask, query_mask = masks_lib.density_masks(ranks, num_prompt)
    return self.forward(tokens, content_mask, query_mask, deterministic=deterministic)

  def forward(self, tokens: jax.Array, content_mask: jax.Array, query_mask: jax.Array,
              query_positions: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
    """Full forward under explicit masks.

    Args:
      tokens: int32 [B, N].
      content_mask: bool [B, N, N], True = may attend.
      query_mask: bool [B, N, N].
      query_positions: optional int32 [B, Q]: compute only these query rows.

    Returns:
      float32 [B, Q, V] (Q = N when query_positions is None).
    """
    batch, length = tokens.shape
    self._check_length(length)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if query_positions is None:
      query_positions = positions
    else:
      query_mask = jnp.take_along_axis(query_mask, query_positions[:, :, None], axis=1)
    logits, _ = self._run(tokens, positions, content_mask, query_positions, query_mask,
                          cache=None, deterministic=deterministic)
    return logits

  def extend(self, cache: KVCache, tokens: jax.Array, content_positions: jax.Array,
             content_mask: jax.Array, query_positions: jax.Array, query_mask: jax.Array
             ) -> tuple[jax.Array, KVCache]:
    """Cached forward: computes only the given content rows and query rows.

    Keys/values of positions not in `content_positions` are read from `cache`; the caller guarantees
    that every key a row may attend to is either valid in the cache or among the new content rows.

    Args:
      cache: a KVCache (`init_cache`, or `empty_cache` without precomputed relative keys).
      tokens: int32 [B, S], the tokens at `content_positions`.
      content_positions: int32 [B, S]; entries equal to N are padding (computed, never written).
      content_mask: bool [B, S, N], visibility of the new content rows.
      query_positions: int32 [B, Q].
      query_mask: bool [B, Q, N].

    Returns:
      (logits float32 [B, Q, V], the cache with the new rows' keys/values written).
    """
    self._check_length(cache.length)
    return self._run(tokens, content_positions, content_mask, query_positions, query_mask,
                     cache=cache, deterministic=True)

  def _check_length(self, length: int):
    if length > self.cfg.max_len:
      raise ValueError(f"sequence length {length} exceeds the model's max_len {self.cfg.max_len}")

  def init_cache(self, batch: int, length: int, *, query_rows: int = 1) -> KVCache:
    """An empty cache for `batch` rows of `length` positions, with the relative-position keys of
    every layer precomputed (they depend only on the parameters and N, so a sampling loop that
    reuses the cache never recomputes them).

    `query_rows` is the number of query rows a forward will compute per batch row: when the LM head
    multiplies more than one row in all and `backend.current().transposed_output_weight` (the CPU),
    the cache also holds its weight transposed to [M, V] in float32, the layout XLA's CPU backend
    multiplies 1.3-2x faster for 2 to 16 rows (and slower for one), so the loop neither transposes
    nor converts it every forward.
    """
    self._check_length(length)
    cache = empty_cache(self.cfg, batch, length).replace(
        relative_keys=self._relative_keys(length, deterministic=True))
    if batch * query_rows > 1 and backend.current().transposed_output_weight:
      cache = cache.replace(output_weight=jnp.asarray(self.embedding.astype(jnp.float32).T))
    return cache

  def _relative_keys(self, length: int, *, deterministic: bool) -> tuple[jax.Array, ...]:
    """Every layer's relative-position keys [H, 2N-1, D]; one dropout draw on the shared table."""
    table = self.dropout(relative_table(length, self.cfg.d_model), deterministic=deterministic)
    return tuple(layer.relative_keys(table) for layer in self.layers)

  def _run(self, tokens, content_positions, content_mask, query_positions, query_mask, *,
           cache: KVCache | None, deterministic: bool):
    cfg = self.cfg
    dt = cfg.compute_dtype
    length = content_mask.shape[-1]
    h = jnp.take(self.embedding, tokens, axis=0).astype(dt)  # [B, S, M]
    g = jnp.broadcast_to(self.mask_emb.astype(dt), query_positions.shape + (cfg.d_model,))
    h = self.dropout(h, deterministic=deterministic)
    g = self.dropout(g, deterministic=deterministic)
    if cache is not None and cache.relative_keys is not None:
      rel_keys = cache.relative_keys
    else:
      rel_keys = self._relative_keys(length, deterministic=deterministic)
    rows = RowLayout.of(jnp.concatenate([content_positions, query_positions], axis=1),
                        jnp.concatenate([content_mask, query_mask], axis=1))  # S + Q rows
    keys, values = [], []
    for index, layer in enumerate(self.layers):
      layer_keys = None if cache is None else cache.keys[index]
      layer_values = None if cache is None else cache.values[index]
      h, g, k, v = layer(h, content_positions, g, rows, layer_keys, layer_values, rel_keys[index],
                         full=cache is None, last=index == len(self.layers) - 1,
                         deterministic=deterministic)
      keys.append(k)
      values.append(v)
    g = self.dropout(g, deterministic=deterministic)
    if cache is not None and cache.output_weight is not None:
      logits = jnp.einsum("bqm,mv->bqv", g.astype(jnp.float32), cache.output_weight)
    else:
      logits = jnp.einsum("bqm,vm->bqv", g.astype(jnp.float32),
                          self.embedding.astype(jnp.float32))
    logits = logits + self.lm_bias.astype(jnp.float32)  # [B, Q, V]
    new_cache = None if cache is None else cache.replace(keys=tuple(keys), values=tuple(values))
    return logits, new_cache


def init_params(cfg: ModelConfig, rng: jax.Array, length: int = 8) -> dict:
  """Randomly initialised parameters (plain arrays, logical-axis boxes removed)."""
  tokens = jnp.zeros((1, length), jnp.int32)
  ranks = masks_lib.left_to_right_ranks(1, length)
  variables = ASARM(cfg).init(rng, tokens, ranks, 1)
  return nn.unbox(variables["params"])


def param_logical_axes(cfg: ModelConfig) -> dict:
  """The logical axis names of every parameter, as a pytree of PartitionSpecs."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  ranks = masks_lib.left_to_right_ranks(1, 8)
  abstract = jax.eval_shape(lambda: ASARM(cfg).init(jax.random.key(0), tokens, ranks, 1))
  return nn.get_partition_spec(abstract)["params"]


def empty_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
  """A zero KVCache sized for this model."""
  return KVCache.zeros(cfg.n_layers, batch, length, cfg.n_heads, cfg.d_head, cfg.compute_dtype)


def cast_for_inference(cfg: ModelConfig, params: dict, dtype: str) -> tuple[ModelConfig, dict]:
  """The same model stored and computed in `dtype` ("float32" or "bfloat16"): (config, params).

  With "bfloat16" the weights and the sampler's cache take half the memory and half the bytes a
  forward reads; attention scores, softmax and the LM head stay in float32, and so does the
  relative-position product's accumulation (its operands too on the CPU: backend.py). It is a
  different model from the float32 one (its logits differ by bfloat16 rounding), and every sampler
  draws exactly from *its* law.
  """
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"inference dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
  cast = dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype)
  store = cast.storage_dtype
  return cast, jax.tree_util.tree_map(
      lambda x: x.astype(store) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

"""The any-order joint objective used to train AS-ARMs: the paper's recipe (arXiv 2504.20456).

For every example of a batch:
1. a masking rate is drawn: stratified across the batch (example s of B draws uniformly from bin s of
   [min_rate, max_rate]), the range warming up linearly from `start_rate` over `warmup_steps`;
2. `max(1, int(num_valid * rate))` of its valid positions, chosen uniformly at random, are hidden;
3. the order ranks the visible positions first (left to right), then the hidden ones (left to right,
   or in a uniformly random order), then the padding;
4. the model reads the sequence under the density masks of that order with the visible block as the
   prompt, and the loss is the mean cross-entropy of the query-stream logits over hidden positions.

Padding (`batch['valid']` False) is never hidden and never counted. Ranked after every valid position,
it is invisible to them in both streams, so padding tokens cannot change the loss.

Everything here is pure jnp: `any_order_loss(params, batch, rng, ...)` is safe under jit, grad, vmap.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from asarm_jax import config_util
from asarm_jax import masks as masks_lib
from asarm_jax.model import ASARM, ModelConfig

MIXTURE = "mixture"
HIDDEN_ORDERS = masks_lib.ORDERS + (MIXTURE,)


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """How many positions are hidden per example, and in which order they are predicted.

  Attributes:
    min_rate, max_rate: the masking-rate range after warm-up, 0 <= min_rate <= max_rate <= 1.
    start_rate: both ends of the range start here and move linearly to [min_rate, max_rate] over
      `warmup_steps`; None (or warmup_steps == 0) means no warm-up.
    warmup_steps: length of the masking-rate warm-up in optimizer steps.
    stratified: True draws example s of B uniformly from bin s of the range (the paper's recipe);
      False draws every example's rate uniformly from the whole range.
    hidden_order: one of `masks.ORDERS` ('left_to_right' is the paper's order; see
      `masks.ORDER_HELP`), or 'mixture': each example left to right with probability
      `mixture_left_to_right`, else in `mixture_other`.
    mixture_left_to_right: the mixture's probability of the left-to-right order.
    mixture_other: the mixture's other order, one of `masks.ORDERS` but 'left_to_right'.
  """
  min_rate: float = 0.05
  max_rate: float = 0.95
  start_rate: float | None = None
  warmup_steps: int = 0
  stratified: bool = True
  hidden_order: str = "left_to_right"
  mixture_left_to_right: float = 0.5
  mixture_other: str = "random"

  def __post_init__(self):
    if not 0.0 <= self.min_rate <= self.max_rate <= 1.0:
      raise ValueError(f"masking rates need 0 <= min_rate <= max_rate <= 1; got min_rate="
                       f"{self.min_rate}, max_rate={self.max_rate}")
    if self.start_rate is not None and not 0.0 <= self.start_rate <= 1.0:
      raise ValueError(f"start_rate must be None or in [0, 1]; got {self.start_rate}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0; got {self.warmup_steps}")
    if self.hidden_order not in HIDDEN_ORDERS:
      raise ValueError(f"hidden_order must be one of {HIDDEN_ORDERS}; got {self.hidden_order!r}")
    if not 0.0 <= self.mixture_left_to_right <= 1.0:
      raise ValueError("mixture_left_to_right must be a probability in [0, 1]; got "
                       f"{self.mixture_left_to_right}")
    others = tuple(o for o in masks_lib.ORDERS if o != "left_to_right")
    if self.mixture_other not in others:
      raise ValueError(f"mixture_other must be one of {others}; got {self.mixture_other!r}")

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "MaskingConfig":
    """Builds a config from a dict, rejecting unknown keys by name."""
    return config_util.from_dict(cls, values, owner="objective")


@flax.struct.dataclass
class Order:
  """A training order for a batch.

  Attributes:
    ranks: int32 [B, N], a permutation per row: visible, then hidden, then padding.
    num_prompt: int32 [B], the number of visible (valid, not hidden) positions.
    hidden: bool [B, N], the positions whose tokens are predicted.
  """
  ranks: jax.Array
  num_prompt: jax.Array
  hidden: jax.Array


@flax.struct.dataclass
class LossMetrics(clu_metrics.Collection):
  """Token-weighted metrics over hidden positions; `loss.count` is the number of hidden tokens."""
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Average.from_output("accuracy")


def rate_range(masking: MaskingConfig, step: jax.Array | int) -> tuple[jax.Array, jax.Array]:
  """The masking-rate range (low, high), float32 scalars, at optimizer step `step`."""
  low = jnp.float32(masking.min_rate)
  high = jnp.float32(masking.max_rate)
  if masking.start_rate is None or masking.warmup_steps == 0:
    return low, high
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / masking.warmup_steps, 0.0, 1.0)
  start = jnp.float32(masking.start_rate)
  return start + progress * (low - start), start + progress * (high - start)


def sample_rates(rng: jax.Array, batch_size: int, low: jax.Array | float, high: jax.Array | float,
                 *, stratified: bool = True) -> jax.Array:
  """Masking rates float32 [B] in [low, high].

  Stratified: example s draws uniformly from [low + s * w, low + (s + 1) * w), w = (high - low) / B.
  """
  uniform = jax.random.uniform(rng, (batch_size,), jnp.float32)
  if stratified:
    uniform = (jnp.arange(batch_size, dtype=jnp.float32) + uniform) / batch_size
  return low + uniform * (high - low)


def num_hidden_for(valid: jax.Array, rates: jax.Array) -> jax.Array:
  """int32 [B]: `max(1, int(num_valid * rate))`, but never more than num_valid (0 for empty rows)."""
  num_valid = jnp.sum(valid, axis=-1, dtype=jnp.int32)
  count = jnp.floor(num_valid.astype(jnp.float32) * rates).astype(jnp.int32)
  return jnp.minimum(jnp.maximum(count, 1), num_valid)


def choose_hidden(rng: jax.Array, valid: jax.Array, num_hidden: jax.Array) -> jax.Array:
  """bool [B, N]: `num_hidden[b]` valid positions of row b, a uniformly random subset."""
  noise = jax.random.uniform(rng, valid.shape, jnp.float32)
  noise_rank = masks_lib.ranks_from_sort_keys(jnp.where(valid, noise, 2.0))  # padding sorts last
  return noise_rank < num_hidden[:, None]


def training_order(valid: jax.Array, hidden: jax.Array, *, hidden_order: str = "left_to_right",
                   rng: jax.Array | None = None, mixture_left_to_right: float = 0.5,
                   mixture_other: str = "random") -> Order:
  """The order of the joint objective: visible (left to right), hidden, then padding.

  Args:
    valid: bool [B, N], False on padding.
    hidden: bool [B, N], a subset of `valid`.
    hidden_order: one of `HIDDEN_ORDERS` (see `MaskingConfig`).
    rng: PRNG key, needed for the 'random' and 'mixture' orders.
    mixture_left_to_right, mixture_other: the mixture (see `MaskingConfig`).

  Returns:
    The Order; padding takes the last ranks, so no valid position ever attends to it.
  """
  if hidden_order not in HIDDEN_ORDERS:
    raise ValueError(f"hidden_order must be one of {HIDDEN_ORDERS}; got {hidden_order!r}")
  if hidden_order in ("random", MIXTURE) and rng is None:
    raise ValueError(f"hidden_order={hidden_order!r} needs an rng")
  hidden = hidden & valid
  visible = valid & ~hidden
  if hidden_order == MIXTURE:
    choice_rng, order_rng = jax.random.split(rng)
    left_to_right = jax.random.bernoulli(choice_rng, mixture_left_to_right, valid.shape[:1])
    ranks = jnp.where(left_to_right[:, None],
                      masks_lib.order_ranks("left_to_right", visible, valid=valid),
                      masks_lib.order_ranks(mixture_other, visible, valid=valid, key=order_rng))
  else:
    ranks = masks_lib.order_ranks(hidden_order, visible, valid=valid, key=rng)
  num_prompt = jnp.sum(visible, axis=-1, dtype=jnp.int32)
  return Order(ranks=ranks, num_prompt=num_prompt, hidden=hidden)


def make_order(rng: jax.Array, valid: jax.Array, rates: jax.Array,
               masking: MaskingConfig = MaskingConfig()) -> Order:
  """Hides `num_hidden_for(valid, rates)` random valid positions per row and orders the batch in
  `masking`'s hidden order."""
  hide_rng, order_rng = jax.random.split(rng)
  hidden = choose_hidden(hide_rng, valid, num_hidden_for(valid, rates))
  return training_order(valid, hidden, hidden_order=masking.hidden_order, rng=order_rng,
                        mixture_left_to_right=masking.mixture_left_to_right,
                        mixture_other=masking.mixture_other)


def hidden_cross_entropy(logits: jax.Array, targets: jax.Array, hidden: jax.Array) -> LossMetrics:
  """Cross-entropy and accuracy of `logits` [B, N, V] against `targets` [B, N] where `hidden`.

  Returns a LossMetrics whose averages run over hidden positions only (token-weighted); its
  `loss.total` is the summed cross-entropy and `loss.count` the number of hidden tokens.
  """
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, N]
  cross_entropy = jax.nn.logsumexp(logits, axis=-1) - target_logit  # [B, N]
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return LossMetrics.single_from_model_output(loss=cross_entropy, accuracy=correct, mask=hidden)


def draw_order(rng: jax.Array, valid: jax.Array, masking: MaskingConfig,
               step: jax.Array | int = 0, rates: jax.Array | None = None) -> Order:
  """Draws the masking rates (unless given), hidden sets and order of a batch.

  Args:
    rng: PRNG key.
    valid: bool [B, N], False on padding.
    masking: masking-rate range, warm-up and hidden order.
    step: the optimizer step (drives the masking-rate warm-up).
    rates: optional float32 [B] masking rates to use instead of drawing them.
  """
  rate_rng, order_rng = jax.random.split(rng)
  if rates is None:
    low, high = rate_range(masking, step)
    rates = sample_rates(rate_rng, valid.shape[0], low, high, stratified=masking.stratified)
  return make_order(order_rng, valid, rates, masking)


def order_loss(params: Any, tokens: jax.Array, order: Order, *, model_cfg: ModelConfig,
               dropout_rng: jax.Array | None = None, deterministic: bool = False
               ) -> tuple[jax.Array, LossMetrics]:
  """Mean cross-entropy of the query-stream logits over `order.hidden`, under the order's density
  masks with the visible block as the prompt.

  Args:
    params: the ASARM parameters.
    tokens: int32 [B, N].
    order: from `draw_order` / `make_order`.
    model_cfg: the model's configuration.
    dropout_rng: PRNG key for dropout (needed unless deterministic).
    deterministic: True disables dropout.

  Returns:
    (loss, LossMetrics).
  """
  logits = ASARM(model_cfg).apply({"params": params}, tokens, order.ranks,
                                  num_prompt=order.num_prompt, deterministic=deterministic,
                                  rngs=None if deterministic else {"dropout": dropout_rng})
  metrics = hidden_cross_entropy(logits, tokens, order.hidden)
  return metrics.loss.total / jnp.maximum(metrics.loss.count, 1), metrics


def any_order_loss(params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
                   model_cfg: ModelConfig, masking: MaskingConfig, step: jax.Array | int = 0,
                   rates: jax.Array | None = None, deterministic: bool = False
                   ) -> tuple[jax.Array, LossMetrics]:
  """The joint any-order objective of one batch: `draw_order` then `order_loss`.

  Args:
    params: the ASARM parameters.
    batch: 'tokens' int32 [B, N] and 'valid' bool [B, N] (all valid if absent).
    rng: PRNG key for the masking rates, hidden sets, hidden order and dropout.
    model_cfg: the model's configuration.
    masking: masking-rate range, warm-up and hidden order.
    step: the optimizer step (drives the masking-rate warm-up).
    rates: optional float32 [B] masking rates to use instead of drawing them.
    deterministic: True disables dropout (evaluation).

  Returns:
    (loss: mean cross-entropy over hidden positions, LossMetrics).
  """
  tokens = batch["tokens"]
  valid = batch.get("valid")
  if valid is None:
    valid = jnp.ones(tokens.shape, bool)
  order_rng, dropout_rng = jax.random.split(rng)
  order = draw_order(order_rng, valid, masking, step, rates)
  return order_loss(params, tokens, order, model_cfg=model_cfg, dropout_rng=dropout_rng,
                    deterministic=deterministic)

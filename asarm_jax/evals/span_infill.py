"""Batched infilling of many examples, each with its own hidden positions: the evaluations' sampler.

An example is a token sequence and a mask of hidden positions (oracle length: the number of hidden
tokens is known). `infill_examples` groups examples by padded length (multiples of
`length_bucket`), sorts each group by the number of hidden tokens so that the rows of a batch finish
together, and fills batches of a fixed size with `sampling.timed_sample` in the paper's infill order
(visible tokens first, then the hidden ones left to right). Short batches are topped up with copies
of their first row, so that every batch of a length bucket shares one compilation; the copies are
discarded and not counted in the statistics (their share of the wall-clock is).

Example i always samples with the key `fold_in(rng, i)`, and a row's result does not depend on the
other rows of its batch, so a completion does not depend on the batch size or on which other
examples are evaluated.

`fit_context` cuts a prefix / middle / suffix triple to a length budget: the prefix loses tokens on
the left, the suffix on the right.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import masks as masks_lib
from asarm_jax import sampling
from asarm_jax.evals import report
from asarm_jax.model import ModelConfig

METHODS = (*sampling.METHODS, "oracle")  # the oracle: the reference itself, without sampling


@dataclasses.dataclass(frozen=True)
class Example:
  """One infilling problem.

  Attributes:
    tokens: int32 [L]: the full sequence; the values at hidden positions are the reference.
    hidden: bool [L]: the positions to generate (at least one; not all).
  """
  tokens: np.ndarray
  hidden: np.ndarray

  @classmethod
  def from_span(cls, prefix: Sequence[int], middle: Sequence[int],
                suffix: Sequence[int]) -> Example:
    tokens = np.asarray([*prefix, *middle, *suffix], np.int32)
    hidden = np.zeros(len(tokens), bool)
    hidden[len(prefix):len(prefix) + len(middle)] = True
    return cls(tokens=tokens, hidden=hidden)

  def middle(self, tokens: np.ndarray | None = None) -> np.ndarray:
    """The tokens at the hidden positions of `tokens` (default: the reference)."""
    return np.asarray(self.tokens if tokens is None else tokens)[self.hidden]


def fit_context(prefix: Sequence[int], middle_len: int, suffix: Sequence[int], max_len: int,
                suffix_share: float = 0.25) -> tuple[list[int], list[int]] | None:
  """Cuts prefix and suffix so that prefix + middle + suffix fits in `max_len` tokens.

  When they do not fit, the suffix keeps up to `suffix_share` of the room left by the middle (more
  if the prefix is shorter than the rest) and the prefix the remainder; the prefix loses tokens on
  its left (far from the hole), the suffix on its right.

  Returns:
    (prefix, suffix) as kept, or None when the middle alone leaves no room for a single context
    token (the example cannot be posed).
  """
  room = max_len - middle_len
  if middle_len < 1 or room < 1:
    return None
  prefix, suffix = list(prefix), list(suffix)
  if len(prefix) + len(suffix) <= room:
    return prefix, suffix
  suffix_keep = min(len(suffix), max(room - len(prefix), int(room * suffix_share)))
  prefix_keep = min(len(prefix), room - suffix_keep)
  suffix_keep = min(len(suffix), room - prefix_keep)
  return prefix[len(prefix) - prefix_keep:], suffix[:suffix_keep]


def _batches(examples: Sequence[Example], batch_size: int, length_bucket: int,
             max_len: int) -> list[tuple[int, list[int]]]:
  """(padded length, example indices) per batch: grouped by length, sorted by hidden count."""
  groups: dict[int, list[int]] = {}
  for index, example in enumerate(examples):
    used = len(example.tokens)
    length = min(-(-used // length_bucket) * length_bucket, max_len)
    groups.setdefault(length, []).append(index)
  batches = []
  for length in sorted(groups):
    indices = sorted(groups[length], key=lambda i: (-int(examples[i].hidden.sum()), i))
    batches += [(length, indices[s:s + batch_size])
                for s in range(0, len(indices), batch_size)]
  return batches


def check_examples(examples: Sequence[Example], cfg: ModelConfig) -> None:
  """Raises ValueError for an example the sampler cannot take."""
  for index, example in enumerate(examples):
    length, hidden = len(example.tokens), int(example.hidden.sum())
    if example.hidden.shape != example.tokens.shape:
      raise ValueError(f"example {index}: tokens and hidden differ in shape")
    if not 0 < hidden < length or length > cfg.max_len:
      raise ValueError(f"example {index}: needs 0 < hidden ({hidden}) < length ({length}) <= "
                       f"max_len ({cfg.max_len})")


@dataclasses.dataclass(frozen=True)
class Infilled:
  """What `infill_examples` returns; per-example fields are in example order.

  Attributes:
    tokens: the completed sequences, int32 [L_i] each (hidden positions filled).
    nfe: int [num_examples]: forward passes of each example's row (0 for the oracle).
    rounds: int [num_examples]: sampler iterations of each row.
    stats: the totals (padding rows excluded) and wall-clock of the method.
  """
  tokens: list[np.ndarray]
  nfe: np.ndarray
  rounds: np.ndarray
  stats: report.SamplingStats


def infill_examples(params, cfg: ModelConfig, examples: Sequence[Example], rng: jax.Array, *,
                    method: str, batch_size: int = 16, length_bucket: int = 64,
                    draft_len: int = 5, **sampling_kwargs) -> Infilled:
  """Fills the hidden positions of every example.

  Args:
    params, cfg: the model.
    examples: what to fill (see `Example`).
    rng: PRNG key; example i uses `fold_in(rng, i)`.
    method: one of `sampling.METHODS`, or 'oracle' (returns the reference tokens without
      sampling: a check of everything around the sampler).
    batch_size: rows per sampler call.
    length_bucket: sequence lengths are rounded up to a multiple of this (at most cfg.max_len).
    draft_len: ASSD's k (both ASSD methods).
    **sampling_kwargs: temperature, top_k, top_p, banned_ids (see `sampling.sample`).

  Returns:
    The completed sequences, per-example NFE and rounds, and the method's SamplingStats.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")
  check_examples(examples, cfg)
  stats = report.SamplingStats(method=method,
                               draft_len=report.drafts_per_round(method, draft_len))
  nfe = np.zeros((len(examples),), np.int64)
  rounds = np.zeros((len(examples),), np.int64)
  if method == "oracle":
    stats.rows = len(examples)
    stats.tokens = sum(int(e.hidden.sum()) for e in examples)
    return Infilled([np.asarray(e.tokens, np.int32) for e in examples], nfe, rounds, stats)
  results: list[np.ndarray | None] = [None] * len(examples)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(len(examples)))
  for length, indices in _batches(examples, batch_size, length_bucket, cfg.max_len):
    rows = indices + [indices[0]] * (batch_size - len(indices))  # top up: one compiled shape
    tokens = np.zeros((batch_size, length), np.int32)  # [B, N]
    is_prompt = np.zeros((batch_size, length), bool)  # [B, N]
    num_valid = np.zeros((batch_size,), np.int32)
    generated = np.zeros((batch_size,), np.int32)
    for row, index in enumerate(rows):
      example = examples[index]
      used = len(example.tokens)
      tokens[row, :used] = example.tokens
      is_prompt[row, :used] = ~example.hidden
      num_valid[row] = used
      generated[row] = example.hidden.sum()
    # Visible first, then hidden, each left to right; padding (not prompt, at the end) ranks last.
    ranks = np.asarray(masks_lib.infill_ranks(jnp.asarray(is_prompt)))
    num_prompt = is_prompt.sum(axis=1).astype(np.int32)
    out, compile_seconds, seconds = sampling.timed_sample(
        params, cfg, tokens, ranks, num_prompt, row_keys[np.asarray(rows)], method=method,
        draft_len=draft_len, num_valid=num_valid, **sampling_kwargs)
    keep = np.arange(batch_size) < len(indices)
    stats.add_call(out, generated, keep, seconds, compile_seconds)
    out_tokens = np.asarray(out.tokens)
    for row, index in enumerate(indices):
      results[index] = out_tokens[row, :num_valid[row]]
      nfe[index] = int(out.nfe[row])
      rounds[index] = int(out.rounds[row])
  return Infilled(results, nfe, rounds, stats)

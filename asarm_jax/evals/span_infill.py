"""Infilling many examples for the evaluations: the library's pipeline (`infilling.fill_examples`)
with the evaluations' bookkeeping, plus an "oracle" method that returns the reference (a check of
everything around the sampler).

`fit_context` cuts a prefix / middle / suffix triple to a length budget: the prefix loses tokens on
the left, the suffix on the right.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from asarm_jax import infilling
from asarm_jax import sampling
from asarm_jax.evals import report
from asarm_jax.infilling import Example, check_examples
from asarm_jax.model import ModelConfig

METHODS = (*sampling.METHODS, sampling.AUTO, "oracle")  # oracle: the reference, not sampled


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
                    draft_len: int = sampling.DEFAULT_DRAFT_LEN, **sampling_kwargs) -> Infilled:
  """Fills the hidden positions of every example.

  Args:
    params, cfg: the model.
    examples: what to fill (see `Example`).
    rng: PRNG key; example i uses `fold_in(rng, i)`.
    method: one of sampling.METHODS, or 'oracle' (returns the reference tokens without sampling:
      a check of everything around the sampler).
    batch_size: rows per sampler call.
    length_bucket: sequence lengths are rounded up to a multiple of this (at most cfg.max_len).
    draft_len: ASSD's k (both ASSD methods).
    **sampling_kwargs: temperature, top_k, top_p, banned_ids, order, ... (see
      `infilling.fill_examples`).

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
  for batch in infilling.fill_examples(params, cfg, examples, rng, batch_size=batch_size,
                                       length_bucket=length_bucket, method=method,
                                       draft_len=draft_len, **sampling_kwargs):
    stats.add_call(batch.out, batch.generated, batch.keep, batch.seconds, batch.compile_seconds)
    for index, tokens, row in batch.completions():
      results[index] = tokens
      nfe[index] = int(batch.out.nfe[row])
      rounds[index] = int(batch.out.rounds[row])
  return Infilled(results, nfe, rounds, stats)

"""Exact sampling laws by enumeration: the reference the exactness tests and the benchmarks use.

A tiny model (token ids 0, 1, 2 samplable, 3 the mask token; N = 6) has at most 3^6 completions,
so the law of sequential decoding in a given order can be computed exactly (`exact_law`). `CASES`
are four prompt/order cases (prompts of 0 to 3 tokens, ragged in one batch); `draw` samples all of
them in one batched call and `check_all` compares each case's samples with its exact law
(`compare_law`: a chi-square test and a total-variation bound). A sampler is exact when every case
passes; tests/test_sampling_exact.py shows the check failing on deliberately wrong rules.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from asarm_jax import masks, processors, sampling
from asarm_jax.model import ASARM, ModelConfig, init_params

VOCAB = 4      # token ids 0, 1, 2 are samplable
MASK_ID = 3    # ... and 3 is the mask token, always banned
LENGTH = 6
SAMPLABLE = VOCAB - 1
PER_CASE = 20_000  # samples of every case in one check
PVALUE_THRESHOLD = 1e-3
# Logit-processing configs of the checks, by name.
SAMPLINGS = {
    "t1": dict(temperature=1.0),
    "t0.7": dict(temperature=0.7),
    "t1_topk2": dict(temperature=1.0, top_k=2),
    "t0.7_topp0.8": dict(temperature=0.7, top_p=0.8),
}


def tiny_config(**overrides) -> ModelConfig:
  """A 2-layer d_model 16 model. A wide init (0.4) makes its conditionals far from uniform and
  strongly context dependent (checked in test_tiny_model_is_a_hard_case)."""
  values = dict(vocab_size=VOCAB, mask_token_id=MASK_ID, d_model=16, n_layers=2, n_heads=2,
                d_head=8, d_inner=32, max_len=8, initializer_range=0.4)
  values.update(overrides)
  return ModelConfig(**values)


def tiny_model(seed: int = 1, **overrides):
  """(ModelConfig, params) of `tiny_config(**overrides)`, initialised from `seed`."""
  cfg = tiny_config(**overrides)
  return cfg, init_params(cfg, jax.random.key(seed))


@dataclasses.dataclass(frozen=True)
class Case:
  """One prompt and order: `tokens` (prompt values; others ignored), `ranks`, `num_prompt`."""
  name: str
  tokens: tuple[int, ...]
  ranks: tuple[int, ...]
  num_prompt: int

  @property
  def hidden(self) -> list[int]:
    """Positions to generate, left to right."""
    return [i for i, r in enumerate(self.ranks) if r >= self.num_prompt]


def named_order(order: str, prompt_positions: tuple[int, ...]) -> tuple[int, ...]:
  """The ranks of the library's named order `order` (`masks.ORDERS`) with the prompt at
  `prompt_positions`, as a Case's ranks."""
  is_prompt = np.isin(np.arange(LENGTH), prompt_positions)[None]
  ranks = masks.order_ranks(order, jnp.asarray(is_prompt), key=jax.random.key(0))
  return tuple(int(r) for r in np.asarray(ranks)[0])


# Prompts of 0 to 3 tokens, in varied positions and orders (N = 6, so 3^3 .. 3^6 completions); the
# named orders of masks.ORDERS are each among them.
CASES = (
    Case("empty_prompt_random_order", (0, 0, 0, 0, 0, 0), named_order("random", ()), 0),
    Case("one_token_middle_spread_order", (0, 0, 2, 0, 0, 0), named_order("spread", (2,)), 1),
    Case("two_tokens_scattered", (1, 0, 0, 0, 2, 0), (1, 5, 2, 4, 0, 3), 2),
    Case("infill_three_tokens", (2, 1, 0, 0, 0, 1), named_order("left_to_right", (0, 1, 5)), 3),
)


def case_batch(cases: Sequence[Case], per_case: int):
  """Stacks `per_case` rows of every case: (tokens [B, N], ranks [B, N], num_prompt [B])."""
  tokens = np.repeat(np.array([c.tokens for c in cases], np.int32), per_case, axis=0)
  ranks = np.repeat(np.array([c.ranks for c in cases], np.int32), per_case, axis=0)
  num_prompt = np.repeat(np.array([c.num_prompt for c in cases], np.int32), per_case)
  return tokens, ranks, num_prompt


def hidden_counts(cases: Sequence[Case] = CASES, per_case: int = PER_CASE) -> np.ndarray:
  """Tokens generated in each row of `case_batch(cases, per_case)`: int [B]."""
  return np.array([len(c.hidden) for c in cases]).repeat(per_case)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"))
def _processed_density(params, tokens, ranks, num_prompt, *, cfg, sampling):
  """Processed conditionals [B, N, V] at every position under the density masks."""
  logits = ASARM(cfg).apply({"params": params}, tokens, ranks, num_prompt)
  return processors.probabilities(logits, sampling)


def exact_law(cfg, params, case: Case, sampling: processors.SamplingConfig) -> np.ndarray:
  """The sequential sampler's law by enumeration: float64 [3^h] over completions of the hidden
  positions, indexed in base 3 with the leftmost hidden position most significant.

  Each completion's probability is the product, over hidden positions, of the model's processed
  conditional at that position given every position of lower rank (one density-mask forward).
  """
  hidden = case.hidden
  completions = np.array(list(itertools.product(range(SAMPLABLE), repeat=len(hidden))), np.int32)
  rows = SAMPLABLE ** LENGTH  # pad to one shape, so one compilation serves every case
  tokens = np.tile(np.array(case.tokens, np.int32), (rows, 1))
  tokens[:len(completions)][:, hidden] = completions
  ranks = np.tile(np.array(case.ranks, np.int32), (rows, 1))
  probs = _processed_density(params, jnp.asarray(tokens), jnp.asarray(ranks),
                             jnp.int32(case.num_prompt), cfg=cfg, sampling=sampling)
  probs = np.asarray(probs, np.float64)[:len(completions)][:, hidden]  # [E, h, V]
  law = np.prod(np.take_along_axis(probs, completions[:, :, None], axis=-1)[..., 0], axis=-1)
  assert abs(law.sum() - 1) < 1e-4, law.sum()
  return law


def sampling_config(name: str) -> processors.SamplingConfig:
  """The processing config `SAMPLINGS[name]`, with the mask token banned."""
  options = SAMPLINGS[name]
  return processors.SamplingConfig(temperature=options["temperature"],
                                   top_k=options.get("top_k", 0),
                                   top_p=options.get("top_p", 1.0), banned_ids=(MASK_ID,))


def case_laws(model, config: processors.SamplingConfig,
              cases: Sequence[Case] = CASES) -> list[np.ndarray]:
  """`exact_law` of every case of `cases` for `model` = (cfg, params) under `config`."""
  cfg, params = model
  return [exact_law(cfg, params, case, config) for case in cases]


def outcome_index(samples: np.ndarray, case: Case) -> np.ndarray:
  """Base-3 index of each sample's hidden tokens, int64 [S]; -1 where a token is not samplable."""
  values = samples[:, case.hidden].astype(np.int64)  # [S, h]
  index = np.zeros(len(samples), np.int64)
  for column in range(values.shape[1]):
    index = index * SAMPLABLE + values[:, column]
  bad = np.any((values < 0) | (values >= SAMPLABLE), axis=1)
  return np.where(bad, -1, index)


@dataclasses.dataclass
class LawReport:
  """One case's comparison of samples with its exact law (`compare_law`)."""
  name: str
  pvalue: float
  tv: float
  tv_bound: float

  @property
  def ok(self) -> bool:
    """The samples pass: chi-square p-value above PVALUE_THRESHOLD and TV within its bound."""
    return self.pvalue > PVALUE_THRESHOLD and self.tv <= self.tv_bound

  def summary(self) -> str:
    """One line: the case, its p-value and its TV against the bound."""
    return f"{self.name} p={self.pvalue:.3g} tv={self.tv:.4f}<={self.tv_bound:.4f}"


def compare_law(samples: np.ndarray, case: Case, law: np.ndarray) -> LawReport:
  """Chi-square goodness of fit and total variation of `samples` [S, N] against `law`.

  Cells with an expected count below 5 are pooled into one cell. A sample outside the law's support
  (a non-samplable token, or a completion of probability 0) gives p-value 0.

  TV bound: E|count_i - S p_i| <= sqrt(S p_i (1 - p_i)), so E[TV] <= 0.5 sum_i sqrt(p_i (1 - p_i) / S);
  TV moves by at most 1/S per sample, so by McDiarmid it exceeds its mean by 0.015 with probability at
  most exp(-2 S 0.015^2) (1e-4 at S = 20,000).
  """
  count = len(samples)
  index = outcome_index(samples, case)
  outside = np.any(index < 0) or np.any(law[np.maximum(index, 0)] == 0)
  observed = np.bincount(np.maximum(index, 0), minlength=len(law)).astype(np.float64)
  expected = law * count
  tv = 0.5 * np.abs(observed / count - law).sum()
  tv_bound = 0.5 * np.sqrt(law * (1 - law) / count).sum() + 0.015
  if outside:
    return LawReport(case.name, 0.0, tv, tv_bound)
  small = expected < 5
  obs = np.append(observed[~small], observed[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  exp = exp * obs.sum() / exp.sum()  # exact renormalisation (law sums to 1 up to float32 rounding)
  pvalue = float(stats.chisquare(obs, exp).pvalue) if len(obs) > 1 else 1.0
  return LawReport(case.name, pvalue, float(tv), float(tv_bound))


def draw(model, seed: int, cases: Sequence[Case] = CASES, per_case: int = PER_CASE, **options):
  """`per_case` samples of every case from one batched `sampling.sample` call with `options`:
  (tokens [len(cases) * per_case, N], the SampleOutput)."""
  cfg, params = model
  tokens, ranks, num_prompt = case_batch(cases, per_case)
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(seed), **options)
  return np.asarray(out.tokens), out


def check_all(samples: np.ndarray, laws: Sequence[np.ndarray], cases: Sequence[Case] = CASES,
              per_case: int = PER_CASE) -> list[LawReport]:
  """LawReports of every case of a `draw`: the rows of case c are the c-th block of `per_case`."""
  return [compare_law(samples[c * per_case:(c + 1) * per_case], case, law)
          for c, (case, law) in enumerate(zip(cases, laws))]

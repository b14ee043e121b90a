"""Shared pieces of the sampling tests: tiny models, exact laws by enumeration, and the law check."""
from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from asarm_jax import masks, processors, sampling, speculation
from asarm_jax.model import ASARM, ModelConfig, init_params

VOCAB = 4      # token ids 0, 1, 2 are samplable
MASK_ID = 3    # ... and 3 is the mask token, always banned
LENGTH = 6
SAMPLABLE = VOCAB - 1


def tiny_config(**overrides) -> ModelConfig:
  """A 2-layer d_model 16 model. A wide init (0.4) makes its conditionals far from uniform and
  strongly context dependent (checked in test_tiny_model_is_a_hard_case)."""
  values = dict(vocab_size=VOCAB, mask_token_id=MASK_ID, d_model=16, n_layers=2, n_heads=2,
                d_head=8, d_inner=32, max_len=8, initializer_range=0.4)
  values.update(overrides)
  return ModelConfig(**values)


def tiny_model(seed: int = 1, **overrides):
  cfg = tiny_config(**overrides)
  return cfg, init_params(cfg, jax.random.key(seed))


def _ragged_rows(rs: np.random.RandomState, batch: int):
  tokens = rs.randint(0, SAMPLABLE, size=(batch, LENGTH)).astype(np.int32)
  ranks = np.stack([rs.permutation(LENGTH) for _ in range(batch)]).astype(np.int32)
  num_prompt = (np.arange(batch) % LENGTH).astype(np.int32)
  return tokens, ranks, num_prompt


def ragged_batch(batch: int, seed: int = 0):
  """`batch` rows with random tokens and orders and prompt lengths 0..LENGTH-1 (ragged).

  Returns (tokens int32 [B, N], ranks int32 [B, N], num_prompt int32 [B]).
  """
  return _ragged_rows(np.random.RandomState(seed), batch)


def padded_ragged_batch(batch: int, seed: int = 0):
  """`ragged_batch` rows, every third with padding: num_valid in (num_prompt, N], else N.

  Returns (tokens, ranks, num_prompt, num_valid int32 [B]).
  """
  rs = np.random.RandomState(seed)
  tokens, ranks, num_prompt = _ragged_rows(rs, batch)
  num_valid = np.where(np.arange(batch) % 3 == 0,
                       [rs.randint(p + 1, LENGTH + 1) for p in num_prompt], LENGTH)
  return tokens, ranks, num_prompt, num_valid.astype(np.int32)


def context_free(params):
  """The same model with every attention output projection zeroed: each query row's law is then the
  same at every position and in every context, so drafts equal verifications."""
  params = jax.tree_util.tree_map(lambda x: x, params)
  for name, layer in params.items():
    if name.startswith("layer_"):
      attention = dict(layer["attention"])
      attention["o"] = jnp.zeros_like(attention["o"])
      params[name] = {**layer, "attention": attention}
  return params


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


def case_batch(cases, per_case: int):
  """Stacks `per_case` rows of every case: (tokens [B, N], ranks [B, N], num_prompt [B])."""
  tokens = np.repeat(np.array([c.tokens for c in cases], np.int32), per_case, axis=0)
  ranks = np.repeat(np.array([c.ranks for c in cases], np.int32), per_case, axis=0)
  num_prompt = np.repeat(np.array([c.num_prompt for c in cases], np.int32), per_case)
  return tokens, ranks, num_prompt


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
  name: str
  pvalue: float
  tv: float
  tv_bound: float

  @property
  def ok(self) -> bool:
    return self.pvalue > PVALUE_THRESHOLD and self.tv <= self.tv_bound


PVALUE_THRESHOLD = 1e-3


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


# ------------------------------------------------------------------------------------------------
# Exactness by enumeration: PER_CASE samples of every case of CASES in one batched call, checked
# against the exact laws (test_sampling_exact.py, test_sampling_fused.py, test_sampling_cache.py).

PER_CASE = 20_000
SAMPLINGS = {
    "t1": dict(temperature=1.0),
    "t0.7": dict(temperature=0.7),
    "t1_topk2": dict(temperature=1.0, top_k=2),
    "t0.7_topp0.8": dict(temperature=0.7, top_p=0.8),
}


_LAWS = {}


def laws(model, sampling_name):
  """Exact laws of every case under one sampling config (cached)."""
  if sampling_name not in _LAWS:
    cfg, params = model
    options = SAMPLINGS[sampling_name]
    config = processors.SamplingConfig(temperature=options["temperature"],
                                       top_k=options.get("top_k", 0),
                                       top_p=options.get("top_p", 1.0), banned_ids=(MASK_ID,))
    _LAWS[sampling_name] = [exact_law(cfg, params, case, config) for case in CASES]
  return _LAWS[sampling_name]


def draw(model, seed, **options):
  """PER_CASE samples of every case from one batched call: (tokens [4 * PER_CASE, N], output)."""
  cfg, params = model
  tokens, ranks, num_prompt = case_batch(CASES, PER_CASE)
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(seed), **options)
  return np.asarray(out.tokens), out


def check_all(samples, case_laws):
  """LawReports of every case; the rows of case c are the c-th block of PER_CASE."""
  return [compare_law(samples[c * PER_CASE:(c + 1) * PER_CASE], case, law)
          for c, (case, law) in enumerate(zip(CASES, case_laws))]


# ----------------------------------------------------------------------------------------------------
# Deliberately wrong speculative rules (`sampling.Sampler.create(..., rules=...)`): the exactness
# checks must fail on each of them.


def _accept_everything(p, q, drafts, u, num_drafts, keep_first):
  """Every draft kept: a uniform of -1 passes every min(1, q/p) test."""
  return speculation.accept(p, q, drafts, jnp.full_like(u, -1.0), num_drafts, keep_first)


def _resample_from_q(p, q, drafts, u, num_drafts, keep_first):
  """A rejected slot redrawn from q itself instead of the residual max(q - p, 0)."""
  verdict = speculation.accept(p, q, drafts, u, num_drafts, keep_first)
  first_out = jnp.minimum(verdict.num_kept, drafts.shape[1] - 1)[:, None]
  return verdict.replace(residual=speculation.pick_slots(q, first_out))


def _always_keep_first(p, q, drafts, u, num_drafts, keep_first):
  """Every window's first proposal kept untested, exact or not (wrong for fused rounds)."""
  return speculation.accept(p, q, drafts, u, num_drafts, jnp.ones_like(keep_first))


def _stale_probs_refill(old_tokens, old_probs, new_tokens, new_probs, shift, num_tested):
  """The surviving old proposals paired with the laws of the new proposal rows in their slots
  (rows of other ranks, in another context), instead of the laws they were drawn from."""
  tokens, _ = speculation.refill(old_tokens, old_probs, new_tokens, new_probs, shift, num_tested)
  draft_len = old_tokens.shape[1]
  slots = jnp.arange(draft_len)[None, :]
  index = shift[:, None] + slots  # [B, K] into old ++ new
  index = jnp.where(index < num_tested[:, None], draft_len + slots,
                    draft_len + index - num_tested[:, None])
  return tokens, speculation.pick_slots(jnp.concatenate([old_probs, new_probs], axis=1), index)


WRONG_RULES = {
    "accept_all": speculation.Rules(accept=_accept_everything),
    "resample_from_q": speculation.Rules(accept=_resample_from_q),
    "always_keep_first": speculation.Rules(accept=_always_keep_first),
    "stale_probs": speculation.Rules(refill=_stale_probs_refill),
}

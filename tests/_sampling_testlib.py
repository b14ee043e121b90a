"""Test-only pieces of the sampling tests: ragged batches, a context-free model, the cached laws,
the shared law assertions and the deliberately wrong speculative rules.

The tiny model, the cases, the exact laws and the law check are the library's reference,
`asarm_jax.exact_laws`; the names the tests use from it are re-exported here.
"""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import speculation
from asarm_jax.exact_laws import (  # noqa: F401  (re-exported for the tests)
    CASES, LENGTH, MASK_ID, PER_CASE, SAMPLABLE, SAMPLINGS, VOCAB, Case, case_batch, case_laws,
    check_all, compare_law, draw, exact_law, hidden_counts, sampling_config, tiny_config,
    tiny_model)

BATCH = 48  # rows of conftest's `ragged` fixture


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


# ------------------------------------------------------------------------------------------------
# Exactness by enumeration: PER_CASE samples of every case of CASES in one batched call, checked
# against the exact laws (test_sampling_exact.py, test_sampling_fused.py, test_sampling_cache.py).

_LAWS = {}


def laws(model, sampling_name):
  """Exact laws of every case under the config `SAMPLINGS[sampling_name]` (cached per model
  config and name: the tests' models are `tiny_model()`)."""
  key = (model[0], sampling_name)
  if key not in _LAWS:
    _LAWS[key] = case_laws(model, sampling_config(sampling_name))
  return _LAWS[key]


def assert_exact(model, label: str, sampling_name: str, **options):
  """Draws PER_CASE samples of every case with the sampler `options` and the config
  `SAMPLINGS[sampling_name]` (seeded by `label`), and asserts that every case passes the law check
  and that no row took more forwards than tokens. Returns (samples, SampleOutput)."""
  samples, out = draw(model, seed=zlib.crc32(label.encode()),
                      **options, **SAMPLINGS[sampling_name])
  reports = check_all(samples, laws(model, sampling_name))
  print(label, [r.summary() for r in reports])
  assert all(r.ok for r in reports), reports
  assert np.all(np.asarray(out.nfe) <= hidden_counts())
  return samples, out


def assert_rules_fail(model, variant: str, **options):
  """The law check at T = 1 fails on the wrong rules `WRONG_RULES[variant]` with `options`."""
  samples, _ = draw(model, seed=0, temperature=1.0, rules=WRONG_RULES[variant], **options)
  reports = check_all(samples, laws(model, "t1"))
  print(variant, [r.summary() for r in reports])
  assert not all(r.ok for r in reports)
  assert min(r.pvalue for r in reports) < 1e-9


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

"""The context n-gram drafter is exact; the lossy options change the law, by a measured margin.

The same enumeration check as test_sampling_exact.py: one batched call draws lib.PER_CASE samples
of every case, and each case's law must pass the chi-square test and the TV bound. Besides
lib.CASES (whose first case starts from an empty table: no prompt at all) a repeated prompt makes
the bigram proposal a point mass on token 0, far from the model's laws.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _sampling_testlib as lib
from asarm_jax import ngram, processors, sampling

# Three zeros, then three positions left to right: every bigram draft is 0 with probability 1.
REPEATED = lib.Case("repeated_prompt_point_mass_draft", (0, 0, 0, 0, 0, 0), (0, 1, 2, 3, 4, 5), 3)
CASES = (*lib.CASES, REPEATED)
T1 = processors.SamplingConfig(temperature=1.0, banned_ids=(lib.MASK_ID,))


@pytest.fixture(scope="module")
def case_laws(model):
  return lib.case_laws(model, T1, CASES)


def _draw_and_check(model, case_laws, seed, **options):
  """(LawReports of every case, SampleOutput) of one batched call at temperature 1."""
  samples, out = lib.draw(model, seed, CASES, temperature=1.0, **options)
  reports = lib.check_all(samples, case_laws, CASES)
  print(options, [r.summary() for r in reports])
  return reports, out


def test_ngram_drafter_law_matches_enumeration(model, case_laws):
  """With the cache (whose first forward also computes the drafts' content rows)."""
  reports, out = _draw_and_check(model, case_laws, seed=11, method="assd", drafter="ngram",
                                 draft_len=3)
  assert all(r.ok for r in reports), reports
  assert np.all(np.asarray(out.nfe) == np.asarray(out.rounds))  # one forward per round
  assert np.all(np.asarray(out.nfe) <= lib.hidden_counts(CASES))
  # The point-mass drafts of the repeated prompt are kept sometimes and rejected sometimes.
  repeated = slice(4 * lib.PER_CASE, 5 * lib.PER_CASE)
  assert 0 < np.mean(np.asarray(out.nfe)[repeated]) < len(REPEATED.hidden)


@pytest.mark.slow  # 24 s on 2 loaded cores; the drafter's own law test stays in the fast lane
def test_ngram_without_the_residual_fails_the_check(model, case_laws):
  """A rejected n-gram draft redrawn from q instead of max(q - p, 0): the check must fail."""
  reports, _ = _draw_and_check(model, case_laws, seed=12, method="assd", drafter="ngram",
                               draft_len=3, rules=lib.WRONG_RULES["resample_from_q"])
  assert min(r.pvalue for r in reports) < 1e-9, reports


@pytest.mark.slow
def test_r_atol_changes_the_law_beyond_the_noise_band(model, case_laws):
  """The lossy label is measured: r_atol = 0.3 moves some case's TV past its noise bound."""
  reports, _ = _draw_and_check(model, case_laws, seed=13, method="assd", draft_len=3, r_atol=0.3)
  assert max(r.tv - r.tv_bound for r in reports) > 0.01, reports
  assert min(r.pvalue for r in reports) < 1e-9, reports


def test_ngram_laws_follow_the_table():
  """Bigram row of the left neighbour (decided or drafted earlier in the round), else unigram,
  else uniform; banned tokens never proposed."""
  allowed = jnp.array([True, True, True, True, False])  # 4 is banned
  tokens = jnp.array([[0, 1, 0, 1, 0, 2, 3, 3]], jnp.int32)
  decided = jnp.array([[True] * 6 + [False, False]])
  positions = jnp.array([[6, 7]], jnp.int32)  # left neighbour of 6 is decided (2), of 7 drafted
  drafts, laws = ngram.draft(jax.random.key(0)[None], tokens, decided, positions,
                             jnp.array([[True, True]]), allowed)
  laws = np.asarray(laws)[0]
  # Token 2 is never followed by a decided token: the unigram of 0,1,0,1,0,2.
  np.testing.assert_allclose(laws[0], [3 / 6, 2 / 6, 1 / 6, 0, 0], rtol=1e-6)
  after = {0: [0, 2 / 3, 1 / 3, 0, 0], 1: [1, 0, 0, 0, 0], 2: laws[0]}[int(drafts[0, 0])]
  np.testing.assert_allclose(laws[1], after, rtol=1e-6)
  empty = ngram.draft(jax.random.key(0)[None], tokens, jnp.zeros((1, 8), bool), positions,
                      jnp.array([[True, True]]), allowed)[1]
  np.testing.assert_allclose(np.asarray(empty)[0], [[0.25] * 4 + [0]] * 2, rtol=1e-6)


def test_lossy_options_are_refused_where_meaningless_and_labelled(model):
  cfg, _ = model
  with pytest.raises(ValueError, match="r_atol must be a number >= 0"):
    sampling.Sampler.create(cfg, method="assd", r_atol=-0.1)
  with pytest.raises(ValueError, match="sequential decoding has no drafts"):
    sampling.Sampler.create(cfg, method="sequential", r_atol=0.1)
  with pytest.raises(ValueError, match="drafter 'ngram' needs method 'assd'"):
    sampling.Sampler.create(cfg, method="assd_fused", drafter="ngram")
  with pytest.raises(ValueError, match="draft_only_temperature needs drafter 'model'"):
    sampling.Sampler.create(cfg, drafter="ngram", draft_only_temperature=True)
  with pytest.raises(ValueError, match="drafter must be one of"):
    sampling.Sampler.create(cfg, drafter="bigram")
  assert sampling.Sampler.create(cfg, drafter="ngram").name == "assd_ngram"
  assert sampling.Sampler.create(cfg, method="assd_fused", r_atol=0.1).name == "assd_fused (lossy)"
  assert sampling.Sampler.create(cfg, method="assd", draft_only_temperature=True).lossy
  assert not sampling.Sampler.create(cfg, method="assd").lossy

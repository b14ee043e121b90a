"""Fused ASSD rounds and the adaptive draft length: accounting, exactness by enumeration, and checks
that the law test catches deliberately wrong fused rules.

The law tests use _sampling_testlib's assert_exact (20,000 samples of each of asarm_jax.exact_laws'
four cases in one ragged batch, checked against their exact laws), as test_sampling_exact.py does.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import sampling, speculation
import _sampling_testlib as lib

def _check_fused_accounting(out, generated, draft_len):
  """The fused NFE accounting of sampling.py's docstring, row by row."""
  nfe, rounds, accepted, drafted = (np.asarray(x) for x in
                                    (out.nfe, out.rounds, out.accepted, out.drafted))
  assert np.all(nfe <= generated), (nfe, generated)  # the paper's bound still holds
  assert np.all(rounds <= generated)  # every round decides >= 1 token
  assert np.all(nfe <= rounds + 1)  # one forward per round, plus the first one
  rejections = generated - accepted
  assert np.all((rejections >= 0) & (rejections <= rounds))
  assert np.all((drafted >= rounds) & (drafted <= draft_len * rounds))
  if draft_len == 1:  # sequential decoding: every proposal is exact and kept
    np.testing.assert_array_equal(nfe, generated)
    np.testing.assert_array_equal(accepted, generated)


@pytest.mark.parametrize("options", [dict(draft_len=1), dict(draft_len=3), dict(draft_len=8),
                                     dict(draft_len=8, adaptive=True)],
                         ids=["k1", "k3", "k8", "adaptive_k8"])
def test_fused_accounting(model, ragged, options):
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(3),
                        method="assd_fused", **options)
  _check_fused_accounting(out, lib.LENGTH - num_prompt, options["draft_len"])
  is_prompt = ranks < num_prompt[:, None]
  result = np.asarray(out.tokens)
  np.testing.assert_array_equal(result[is_prompt], tokens[is_prompt])
  assert np.all((result >= 0) & (result < lib.SAMPLABLE))


@pytest.mark.parametrize("draft_len", [3, 8])
def test_context_free_model_keeps_every_proposal(model, ragged, draft_len):
  """When every proposal law equals its verify law, fused rounds keep everything: ceil(g / k)
  rounds, one forward each plus the first, minus a last round with a single (exact) proposal."""
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  out = sampling.sample(lib.context_free(params), cfg, tokens, ranks, num_prompt,
                        jax.random.key(4), method="assd_fused", draft_len=draft_len)
  generated = lib.LENGTH - num_prompt
  rounds = -(-generated // draft_len)
  last = generated - draft_len * (rounds - 1)
  np.testing.assert_array_equal(out.accepted, generated)
  np.testing.assert_array_equal(out.rounds, rounds)
  np.testing.assert_array_equal(out.nfe, 1 + rounds - (last == 1))


# Greedy fused decoding and batch independence of fused adaptive rows: test_sampling.py.


# ----------------------------------------------------------------------------------------------------
# Exactness by enumeration (cached, the default; uncached fused: test_sampling_cache.py).

LAW_METHODS = {
    "fused_k1": dict(method="assd_fused", draft_len=1),
    "fused_k3": dict(method="assd_fused", draft_len=3),
    "fused_k8": dict(method="assd_fused", draft_len=8),
    "assd_adaptive_k8": dict(method="assd", draft_len=8, adaptive=True),
    "fused_adaptive_k8": dict(method="assd_fused", draft_len=8, adaptive=True),
}
# Every sampling config for fused k = 3; k = 1 (every proposal exact: sequential decoding), k = 8
# and the adaptive lengths under fewer. Starred cases run by default, the others with the slow
# tests.
LAW_CASES = (
    ("fused_k3", "t1", "*"), ("fused_k3", "t0.7_topp0.8", ""), ("fused_k3", "t0.7", ""),
    ("fused_k3", "t1_topk2", ""), ("fused_k8", "t1", ""), ("fused_k8", "t0.7_topp0.8", ""),
    ("fused_k8", "t1_topk2", ""), ("fused_k1", "t1", ""), ("assd_adaptive_k8", "t1", ""),
    ("assd_adaptive_k8", "t0.7_topp0.8", ""), ("fused_adaptive_k8", "t0.7_topp0.8", "*"),
    ("fused_adaptive_k8", "t1", ""), ("fused_adaptive_k8", "t1_topk2", ""))


@pytest.mark.parametrize("method_name, sampling_name", [
    pytest.param(m, s, marks=[] if star else [pytest.mark.slow], id=f"{m}-{s}")
    for m, s, star in LAW_CASES])
def test_law_matches_enumeration(model, method_name, sampling_name):
  options = LAW_METHODS[method_name]
  _, out = lib.assert_exact(model, f"{method_name}/{sampling_name}", sampling_name, **options)
  if options["method"] == "assd_fused":
    _check_fused_accounting(out, lib.hidden_counts(), options["draft_len"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["stale_probs", "always_keep_first"])
def test_checker_rejects_broken_fused_rules(model, variant):
  """Wrong fused rules fail the same check: surviving proposals tested with the laws of other rows
  ("stale_probs"), or every window's first proposal kept untested ("always_keep_first")."""
  lib.assert_rules_fail(model, variant, method="assd_fused", draft_len=8)


# ----------------------------------------------------------------------------------------------------
# The rules in speculation.py.


def test_refill_takes_survivors_then_new_proposals():
  old = jnp.array([[10, 11, 12, 13]] * 3)
  new = jnp.array([[20, 21, 22, 23]] * 3)
  old_p = jax.nn.one_hot(old, 24)
  new_p = jax.nn.one_hot(new, 24)
  # Row 0: all 4 tested and kept; row 1: rank n+1 rejected (shift 2) of m = 4; row 2: m = 3, the
  # first slot rejected (shift 1).
  tokens, probs = speculation.refill(old, old_p, new, new_p, jnp.array([4, 2, 1]),
                                     jnp.array([4, 4, 3]))
  np.testing.assert_array_equal(tokens, [[20, 21, 22, 23], [12, 13, 20, 21], [11, 12, 20, 21]])
  np.testing.assert_array_equal(jnp.argmax(probs, -1), tokens)  # every law travels with its token
  _, wrong = lib.WRONG_RULES["stale_probs"].refill(old, old_p, new, new_p, jnp.array([4, 2, 1]),
                                                    jnp.array([4, 4, 3]))
  assert not np.array_equal(jnp.argmax(wrong, -1), tokens)


def test_accept_keeps_the_exact_first_draft_and_resamples_the_residual():
  p = jnp.array([[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [1.0, 0.0, 0.0]]])
  q = jnp.array([[[0.0, 1.0, 0.0], [0.1, 0.2, 0.7], [1.0, 0.0, 0.0]]])
  drafts = jnp.array([[0, 0, 0]])
  u = jnp.full((1, 3), 0.5)
  verdict = speculation.accept(p, q, drafts, u, jnp.array([3]), jnp.array([True]))
  np.testing.assert_array_equal(verdict.kept, [[True, False, False]])  # 0.1 / 0.9 < 0.5
  np.testing.assert_allclose(verdict.residual[0, 0], [0.0, 0.1 / 0.8, 0.7 / 0.8], rtol=1e-6)
  tested = speculation.accept(p, q, drafts, u, jnp.array([3]), jnp.array([False]))
  assert int(tested.num_kept[0]) == 0 and bool(tested.rejected[0])  # q_0(0) = 0
  np.testing.assert_allclose(tested.residual[0, 0], [0.0, 1.0, 0.0])
  assert speculation.round_tests(verdict, jnp.array([True])) == (0, 1)


def test_adaptive_draft_length_follows_the_acceptance_rate():
  stats = speculation.AcceptanceStats.initial(3)
  for _ in range(20):
    stats = stats.observe(jnp.array([10, 0, 5]), jnp.array([10, 10, 10]))
  k = speculation.choose_draft_len(stats, 8, jnp.array([True, True, False]))
  np.testing.assert_array_equal(k, [8, 2, 2])  # rate ~1: K; ~0: 1 + the free slot; ~0.5: 2
  k = speculation.choose_draft_len(speculation.AcceptanceStats.initial(1), 8, jnp.array([False]))
  np.testing.assert_array_equal(k, [5])  # the prior, 0.8: 1 / 0.2


@pytest.mark.parametrize("overrides, pattern", [
    (dict(method="sequential", adaptive=True), "adaptive"),
    (dict(use_cache="yes"), "use_cache"),
    (dict(adaptive=1), "adaptive"),
    (dict(method="fused"), "method"),
])
def test_bad_options_raise_before_compiling(model, monkeypatch, overrides, pattern):
  cfg, params = model

  def must_not_compile(*args, **kwargs):
    raise AssertionError("compiled despite a bad argument")

  monkeypatch.setattr(sampling, "_run", must_not_compile)
  with pytest.raises(ValueError, match=pattern):
    sampling.sample(params, cfg, np.zeros((1, 6), np.int32), np.arange(6)[None], 1,
                    jax.random.key(0), **overrides)

"""Exactness: both samplers draw from the model's sequential joint law, checked by enumeration.

A tiny model (3 samplable tokens + the mask token, N = 6) gives laws over at most 3^6 completions.
For every method and logit-processing config, ONE batched call draws 20,000 samples of each of the
four prompt/order cases (ragged prompt lengths 0..3 in one batch) and every case must pass a
chi-square test and a TV bound. The checker itself is shown to fail on broken samplers.
"""
import numpy as np
import pytest

import _sampling_testlib as lib

METHODS = {
    "sequential": dict(method="sequential"),
    "assd_k1": dict(method="assd", draft_len=1),
    "assd_k3": dict(method="assd", draft_len=3),
    "assd_k8": dict(method="assd", draft_len=8),
}


def test_tiny_model_is_a_hard_case(model):
  """The conditionals are far from uniform and depend strongly on context, so a sampler that ignores
  dependencies (drafts accepted blindly) has a clearly different law."""
  for case, law in zip(lib.CASES, lib.laws(model, "t1")):
    h = len(case.hidden)
    joint = law.reshape((lib.SAMPLABLE,) * h)
    marginals = [joint.sum(axis=tuple(a for a in range(h) if a != i)) for i in range(h)]
    product = marginals[0]
    for marginal in marginals[1:]:
      product = np.multiply.outer(product, marginal)
    dependence = 0.5 * np.abs(joint - product).sum()
    print(case.name, "TV(joint, product of marginals)", dependence, "max cell", law.max())
    assert dependence > 0.03, case.name
    assert law.max() < 0.5, case.name  # spread over many completions: the test has power


# k = 1 is also checked token for token against sequential decoding (test_sampling.py), and the
# processing configs are the same code for every k, so these pairs add nothing (and suite time).
_REDUNDANT = {("assd_k1", "t0.7"), ("assd_k1", "t1_topk2"), ("assd_k1", "t0.7_topp0.8"),
              ("assd_k8", "t0.7"), ("assd_k8", "t1_topk2")}
# The development lane (-m "not slow"): each sampler once, every processor among them; 16-33 s
# each on 2 loaded cores.
_FAST = {("sequential", "t1_topk2"), ("assd_k3", "t1"), ("assd_k8", "t0.7_topp0.8")}


@pytest.mark.parametrize("method_name, sampling_name", [
    pytest.param(m, s, id=f"{m}-{s}", marks=[] if (m, s) in _FAST else [pytest.mark.slow])
    for m in METHODS for s in lib.SAMPLINGS if (m, s) not in _REDUNDANT])
def test_law_matches_enumeration(model, method_name, sampling_name):
  samples, _ = lib.assert_exact(model, f"{method_name}/{sampling_name}", sampling_name,
                                **METHODS[method_name])
  assert not np.any(samples == lib.MASK_ID)


@pytest.mark.parametrize("variant", [
    "accept_all", pytest.param("resample_from_q", marks=pytest.mark.slow)])
def test_checker_rejects_broken_acceptance_rules(model, variant):
  """The same check, run on deliberately wrong ASSD rules, must fail."""
  lib.assert_rules_fail(model, variant, method="assd", draft_len=3)


def test_checker_rejects_the_wrong_temperature(model):
  """Exact samples at T = 1 compared with the law at T = 0.7 fail."""
  samples, _ = lib.draw(model, seed=0, method="sequential", temperature=1.0)
  reports = lib.check_all(samples, lib.laws(model, "t0.7"))
  assert all(r.pvalue < 1e-9 for r in reports), reports

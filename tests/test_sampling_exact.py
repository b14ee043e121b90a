"""Exactness: both samplers draw from the model's sequential joint law, checked by enumeration.

A tiny model (3 samplable tokens + the mask token, N = 6) gives laws over at most 3^6 completions.
For every method and logit-processing config, ONE batched call draws 20,000 samples of each of the
four prompt/order cases (ragged prompt lengths 0..3 in one batch) and every case must pass a
chi-square test and a TV bound. The checker itself is shown to fail on broken samplers.
"""
import zlib

import jax
import numpy as np
import pytest

from asarm_jax import processors, sampling
import _sampling_testlib as lib

PER_CASE = 20_000
SAMPLINGS = {
    "t1": dict(temperature=1.0),
    "t0.7": dict(temperature=0.7),
    "t1_topk2": dict(temperature=1.0, top_k=2),
    "t0.7_topp0.8": dict(temperature=0.7, top_p=0.8),
}
METHODS = {
    "sequential": dict(method="sequential"),
    "assd_k1": dict(method="assd", draft_len=1),
    "assd_k3": dict(method="assd", draft_len=3),
    "assd_k8": dict(method="assd", draft_len=8),
}


@pytest.fixture(scope="module")
def model():
  return lib.tiny_model()


_LAWS = {}


def laws(model, sampling_name):
  """Exact laws of every case under one sampling config (cached)."""
  if sampling_name not in _LAWS:
    cfg, params = model
    options = SAMPLINGS[sampling_name]
    config = processors.SamplingConfig(temperature=options["temperature"],
                                       top_k=options.get("top_k", 0),
                                       top_p=options.get("top_p", 1.0), banned_ids=(lib.MASK_ID,))
    _LAWS[sampling_name] = [lib.exact_law(cfg, params, case, config) for case in lib.CASES]
  return _LAWS[sampling_name]


def draw(model, seed, **options):
  """PER_CASE samples of every case from one batched call: (tokens [4 * PER_CASE, N], output)."""
  cfg, params = model
  tokens, ranks, num_prompt = lib.case_batch(lib.CASES, PER_CASE)
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(seed), **options)
  return np.asarray(out.tokens), out


def check_all(samples, case_laws):
  """LawReports of every case; the rows of case c are the c-th block of PER_CASE."""
  return [lib.compare_law(samples[c * PER_CASE:(c + 1) * PER_CASE], case, law)
          for c, (case, law) in enumerate(zip(lib.CASES, case_laws))]


def test_tiny_model_is_a_hard_case(model):
  """The conditionals are far from uniform and depend strongly on context, so a sampler that ignores
  dependencies (drafts accepted blindly) has a clearly different law."""
  for case, law in zip(lib.CASES, laws(model, "t1")):
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


# k = 1 is also checked token for token against sequential decoding (test_sampling.py), so most of
# its configs, and k = 8 under two of them, only run with the slow tests.
_SLOW = {("assd_k1", "t0.7"), ("assd_k1", "t1_topk2"), ("assd_k1", "t0.7_topp0.8"),
         ("assd_k8", "t0.7"), ("assd_k8", "t1_topk2")}


@pytest.mark.parametrize("method_name, sampling_name", [
    pytest.param(m, s, marks=[pytest.mark.slow] if (m, s) in _SLOW else [], id=f"{m}-{s}")
    for m in METHODS for s in SAMPLINGS])
def test_law_matches_enumeration(model, method_name, sampling_name):
  options = {**METHODS[method_name], **SAMPLINGS[sampling_name]}
  samples, out = draw(model, seed=zlib.crc32(f"{method_name}/{sampling_name}".encode()), **options)
  reports = check_all(samples, laws(model, sampling_name))
  print(method_name, sampling_name, [(r.name, f"p={r.pvalue:.3g}", f"tv={r.tv:.4f}<={r.tv_bound:.4f}")
                                      for r in reports])
  assert all(r.ok for r in reports), reports
  generated = np.array([len(c.hidden) for c in lib.CASES]).repeat(PER_CASE)
  nfe = np.asarray(out.nfe)
  assert np.all(nfe <= generated)
  assert not np.any(samples == lib.MASK_ID)


@pytest.mark.parametrize("variant", ["accept_all", "resample_from_q"])
def test_checker_rejects_broken_acceptance_rules(model, variant):
  """The same check, run on deliberately wrong ASSD rules, must fail."""
  samples, _ = draw(model, seed=0, method="assd", draft_len=3, temperature=1.0, rules=lib.WRONG_RULES[variant])
  reports = check_all(samples, laws(model, "t1"))
  print(variant, [(r.name, r.pvalue, r.tv, r.tv_bound) for r in reports])
  assert not all(r.ok for r in reports)
  assert min(r.pvalue for r in reports) < 1e-9


def test_checker_rejects_the_wrong_temperature(model):
  """Exact samples at T = 1 compared with the law at T = 0.7 fail."""
  samples, _ = draw(model, seed=0, method="sequential", temperature=1.0)
  reports = check_all(samples, laws(model, "t0.7"))
  assert all(r.pvalue < 1e-9 for r in reports), reports

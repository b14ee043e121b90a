"""The adaptive order (lowest entropy first): what can be checked of a law that no fixed order has.

- k == 1: the sampler is the sequential process "decide the undecided position of lowest entropy,
  drawing from the model's law there", whose law is enumerated here node by node (the order is
  chosen from each node's own decided tokens) and checked like every exact sampler's.
- k > 1, greedy: the output is the greedy sequential decoding in the order the sampler reports
  (`SampleOutput.ranks`), and that order puts the lowest-entropy position first at every round's
  start, so each round's speculative step is exact given the positions it chose.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _sampling_testlib as lib
from asarm_jax import masks, processors, sampling
from asarm_jax.model import ASARM

T1 = processors.SamplingConfig(temperature=1.0, banned_ids=(lib.MASK_ID,))
# Cases with a prompt: from an empty prompt every position's first law is the same (a tie the
# sampler and the enumeration break alike, left to right, but only up to float rounding).
CASES = lib.CASES[1:]


def _draft_laws(cfg, params, tokens, ranks, num_decided, num_prompt, config):
  """Every position's law given the decided ranks (< num_decided), per node: float64 [M, N, V]."""
  content, query = masks.draft_masks(jnp.asarray(ranks), num_decided, num_prompt)
  logits = ASARM(cfg).apply({"params": params}, jnp.asarray(tokens), content, query,
                            method=ASARM.forward)
  return np.asarray(processors.probabilities(logits, config), np.float64)


def _entropy(probs: np.ndarray) -> np.ndarray:
  return -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), axis=-1)


def adaptive_law(cfg, params, case: lib.Case) -> np.ndarray:
  """The law of lowest-entropy-first sequential decoding at temperature 1, by enumeration, indexed
  as `lib.exact_law`'s."""
  hidden = case.hidden
  # A node: (tokens [N], ranks [N] with the decided positions at ranks < its depth + num_prompt).
  nodes = [(np.array(case.tokens, np.int32), np.array(case.ranks, np.int32), 1.0)]
  for depth in range(len(hidden)):
    decided = case.num_prompt + depth
    probs = _draft_laws(cfg, params, np.stack([t for t, _, _ in nodes]),
                        np.stack([r for _, r, _ in nodes]), decided, case.num_prompt, T1)
    children = []
    for (tokens, ranks, weight), node_probs in zip(nodes, probs):
      undecided = np.flatnonzero(ranks >= decided)
      chosen = undecided[np.argmin(_entropy(node_probs[undecided]))]  # ties: leftmost
      new_ranks = ranks.copy()
      new_ranks[ranks >= decided] += 1  # make room at rank `decided` ...
      new_ranks[chosen] = decided       # ... for the chosen position
      order = np.argsort(new_ranks, kind="stable")
      new_ranks[order] = np.arange(len(ranks))
      for token in range(lib.SAMPLABLE):
        child = tokens.copy()
        child[chosen] = token
        children.append((child, new_ranks, weight * node_probs[chosen, token]))
    nodes = children
  law = np.zeros(lib.SAMPLABLE ** len(hidden))
  for tokens, _, weight in nodes:
    index = 0
    for position in hidden:
      index = index * lib.SAMPLABLE + int(tokens[position])
    law[index] += weight
  assert abs(law.sum() - 1) < 1e-4, law.sum()
  return law


@pytest.mark.slow
def test_adaptive_order_with_one_draft_is_lowest_entropy_first_decoding(model):
  cfg, params = model
  laws = [adaptive_law(cfg, params, case) for case in CASES]
  tokens, ranks, num_prompt = lib.case_batch(CASES, lib.PER_CASE)
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(3), method="assd",
                        draft_len=1, adaptive_order=True)
  samples = np.asarray(out.tokens)
  for c, (case, law) in enumerate(zip(CASES, laws)):
    report = lib.compare_law(samples[c * lib.PER_CASE:(c + 1) * lib.PER_CASE], case, law)
    assert report.ok, report
    # ... which is not the law of the case's fixed order.
    fixed = lib.exact_law(cfg, params, case, T1)
    assert 0.5 * np.abs(fixed - law).sum() > 0.01, case.name  # exact laws: no sampling noise
  # One forward per token, as in sequential decoding.
  np.testing.assert_array_equal(out.nfe, lib.LENGTH - num_prompt)
  np.testing.assert_array_equal(out.rounds, out.nfe)


@pytest.mark.parametrize("use_cache", [pytest.param(True, marks=pytest.mark.slow), False])
def test_adaptive_order_greedy_is_greedy_decoding_in_the_order_it_reports(model, use_cache):
  cfg, params = model
  tokens, ranks, num_prompt, num_valid = lib.padded_ragged_batch(8, seed=4)
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(0), method="assd",
                        draft_len=3, temperature=0.0, adaptive_order=True, use_cache=use_cache,
                        num_valid=num_valid)
  used = np.asarray(out.ranks)
  np.testing.assert_array_equal(np.where(ranks < num_prompt[:, None], used, -1),
                                np.where(ranks < num_prompt[:, None], ranks, -1))  # prompt kept
  padding = ranks >= num_valid[:, None]
  np.testing.assert_array_equal(used[padding], ranks[padding])
  # Greedy decoding in the reported order gives the same tokens.
  reference = sampling.sample(params, cfg, tokens, used, num_prompt, jax.random.key(1),
                              method="sequential", temperature=0.0, num_valid=num_valid)
  np.testing.assert_array_equal(out.tokens, reference.tokens)
  # The first round starts at the position of lowest entropy given the prompt.
  by_rank = np.asarray(masks.positions_by_rank(jnp.asarray(used)))
  probs = _draft_laws(cfg, params, np.asarray(out.tokens), used, num_prompt, num_prompt, T1)
  for row in range(len(tokens)):
    entropy = _entropy(probs[row, by_rank[row, num_prompt[row]:num_valid[row]]])
    assert entropy[0] <= entropy.min() + 1e-5, row
  assert np.all(np.asarray(out.nfe) <= num_valid - num_prompt)


def test_adaptive_order_is_refused_where_it_does_not_apply(model):
  cfg, _ = model
  for options in (dict(method="assd_fused"), dict(method="sequential"),
                  dict(method="assd", drafter="ngram")):
    with pytest.raises(ValueError, match="adaptive_order needs method 'assd'"):
      sampling.Sampler.create(cfg, adaptive_order=True, **options)
  with pytest.raises(ValueError, match="adaptive_order must be True or False"):
    sampling.Sampler.create(cfg, adaptive_order="entropy")
  sampler = sampling.Sampler.create(cfg, adaptive_order=True)  # auto -> assd
  assert sampler.method == "assd" and sampler.name == "assd_adaptive_order"

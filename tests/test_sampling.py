"""Sampler behaviour: NFE accounting, the ASSD lemmas, greedy decoding, batch independence, padding,
and argument validation. Exactness of the laws is in test_sampling_exact.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import processors, sampling
from asarm_jax.model import ASARM
import _sampling_testlib as lib

def _generated(num_prompt, length=lib.LENGTH):
  return length - np.asarray(num_prompt)


def _check_accounting(out, generated, draft_len):
  """The NFE accounting of the module docstring, row by row."""
  nfe, rounds, accepted = (np.asarray(x) for x in (out.nfe, out.rounds, out.accepted))
  assert np.all(nfe <= generated), (nfe, generated)  # the paper's bound
  assert np.all(rounds <= nfe) and np.all(nfe <= 2 * rounds)
  assert np.all(accepted >= rounds)  # each round keeps its first draft
  rejections = generated - accepted
  assert np.all((rejections >= 0) & (rejections <= rounds))
  if draft_len == 1:
    assert np.all(nfe == generated) and np.all(rounds == generated)


@pytest.mark.parametrize("draft_len", [1, 3, 8])
def test_nfe_bound_and_accounting(model, ragged, draft_len):
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(3),
                        method="assd", draft_len=draft_len)
  _check_accounting(out, _generated(num_prompt), draft_len)
  is_prompt = ranks < num_prompt[:, None]
  result = np.asarray(out.tokens)
  np.testing.assert_array_equal(result[is_prompt], tokens[is_prompt])
  assert np.all((result >= 0) & (result < lib.SAMPLABLE))


def test_sequential_accounting(model, ragged):
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(3),
                        method="sequential")
  generated = _generated(num_prompt)
  np.testing.assert_array_equal(out.nfe, generated)
  np.testing.assert_array_equal(out.rounds, generated)
  np.testing.assert_array_equal(out.accepted, 0)


def test_timed_repeats_give_the_same_output_and_a_run_time(model, ragged):
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  rng = jax.random.key(3)
  once = sampling.sample(params, cfg, tokens, ranks, num_prompt, rng, method="sequential")
  out, compile_seconds, run_seconds = sampling.timed_sample(
      params, cfg, tokens, ranks, num_prompt, rng, method="sequential", repeats=3)
  np.testing.assert_array_equal(out.tokens, once.tokens)
  assert compile_seconds > 0 and run_seconds > 0
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="repeats"):
      sampling.timed_sample(params, cfg, tokens, ranks, num_prompt, rng, method="sequential",
                            repeats=bad)


@pytest.mark.parametrize("draft_len", [3, 8])
def test_context_free_model_accepts_every_draft(model, ragged, draft_len):
  """When every draft law equals its verify law (a model whose attention output is zero), ASSD keeps
  all drafts: rounds = ceil(g / k), and NFE = 2 per round except a last round with a single draft."""
  cfg, params = model
  params = lib.context_free(params)
  tokens, ranks, num_prompt = ragged
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(4),
                        method="assd", draft_len=draft_len)
  generated = _generated(num_prompt)
  rounds = -(-generated // draft_len)
  last = generated - draft_len * (rounds - 1)
  np.testing.assert_array_equal(out.accepted, generated)
  np.testing.assert_array_equal(out.rounds, rounds)
  np.testing.assert_array_equal(out.nfe, 2 * rounds - (last == 1))


def _argmax_decode(cfg, params, tokens, ranks, num_prompt):
  """Reference greedy decoding: a plain Python loop of full density forwards."""
  greedy = processors.SamplingConfig(temperature=0.0, banned_ids=(cfg.mask_token_id,))
  forward = jax.jit(lambda t: jnp.argmax(processors.probabilities(
      ASARM(cfg).apply({"params": params}, t, jnp.asarray(ranks), jnp.asarray(num_prompt)),
      greedy), axis=-1))
  by_rank = np.argsort(ranks, axis=-1)
  tokens = np.where(ranks < num_prompt[:, None], tokens, cfg.mask_token_id)
  rows = np.arange(len(tokens))
  for rank in range(tokens.shape[1]):
    best = np.asarray(forward(jnp.asarray(tokens)))
    position = by_rank[:, rank]
    undecided = rank >= num_prompt
    tokens[rows[undecided], position[undecided]] = best[rows[undecided], position[undecided]]
  return tokens


@pytest.mark.slow
def test_greedy_is_argmax_decoding_for_every_sampler(model, ragged):
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  expected = _argmax_decode(cfg, params, tokens, ranks, num_prompt)
  sequential = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(0),
                               method="sequential", temperature=0.0)
  assd = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(1),
                         method="assd", draft_len=3, temperature=0.0)
  fused = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(1),
                          method="assd_fused", draft_len=3, temperature=0.0)
  np.testing.assert_array_equal(sequential.tokens, expected)
  np.testing.assert_array_equal(assd.tokens, expected)
  np.testing.assert_array_equal(fused.tokens, expected)
  _check_accounting(assd, _generated(num_prompt), 3)


def test_assd_k1_is_sequential_token_for_token(model, ragged):
  """Same keys, same key schedule and the same conditional at each rank: identical outputs."""
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  key = jax.random.key(7)
  sequential = sampling.sample(params, cfg, tokens, ranks, num_prompt, key, method="sequential")
  assd = sampling.sample(params, cfg, tokens, ranks, num_prompt, key, method="assd", draft_len=1)
  np.testing.assert_array_equal(assd.tokens, sequential.tokens)
  np.testing.assert_array_equal(assd.nfe, sequential.nfe)


@pytest.mark.parametrize("options", [
    pytest.param(dict(method="assd", draft_len=3), marks=pytest.mark.slow),
    dict(method="sequential"),
    pytest.param(dict(method="assd_fused", draft_len=4, adaptive=True), marks=pytest.mark.slow)],
                         ids=["assd", "sequential", "fused_adaptive"])
def test_rows_do_not_depend_on_their_batch(model, ragged, options):
  """Row b of a ragged batch equals a batch-1 call with key b (finished rows idle untouched;
  batch-wide choices, such as skipping a forward no row needs, never change a row's result, and
  the adaptive draft length is per row)."""
  cfg, params = model
  tokens, ranks, num_prompt = (x[:6] for x in ragged)
  keys = jax.random.split(jax.random.key(11), 6)
  batched = sampling.sample(params, cfg, tokens, ranks, num_prompt, keys, **options)
  for row in range(6):
    single = sampling.sample(params, cfg, tokens[row:row + 1], ranks[row:row + 1],
                             num_prompt[row:row + 1], keys[row:row + 1], **options)
    for field in ("tokens", "nfe", "rounds", "accepted", "drafted"):
      np.testing.assert_array_equal(getattr(single, field)[0], getattr(batched, field)[row],
                                    err_msg=f"row {row} {field}")
  # One key for the whole batch is split into the same per-row keys.
  split = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(11), **options)
  np.testing.assert_array_equal(split.tokens, batched.tokens)


def test_padding_ranked_last_has_no_influence(model, ragged):
  """Positions of rank >= num_valid are invisible: the result on the first 4 positions equals a
  length-4 run, and the padding comes back as given."""
  cfg, params = model
  rs = np.random.RandomState(5)
  short_ranks = np.stack([rs.permutation(4) for _ in range(lib.BATCH)]).astype(np.int32)
  num_prompt = (np.arange(lib.BATCH) % 4).astype(np.int32)
  tokens = ragged[0][:, :4]
  padded_tokens = np.concatenate([tokens, np.full((lib.BATCH, 2), 1, np.int32)], axis=1)
  padded_ranks = np.concatenate([short_ranks, np.tile([4, 5], (lib.BATCH, 1))], axis=1)
  keys = jax.random.split(jax.random.key(2), lib.BATCH)
  for options in (dict(method="assd", draft_len=3), dict(method="sequential")):
    short = sampling.sample(params, cfg, tokens, short_ranks, num_prompt, keys, **options)
    padded = sampling.sample(params, cfg, padded_tokens, padded_ranks, num_prompt, keys,
                             num_valid=4, **options)
    np.testing.assert_array_equal(np.asarray(padded.tokens)[:, :4], short.tokens)
    np.testing.assert_array_equal(np.asarray(padded.tokens)[:, 4:], 1)
    np.testing.assert_array_equal(padded.nfe, short.nfe)


@pytest.mark.slow
def test_bfloat16_model(ragged):
  cfg, params = lib.tiny_model(dtype="bfloat16", param_dtype="bfloat16")
  tokens, ranks, num_prompt = ragged
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(0), method="assd",
                        draft_len=3, top_p=0.9)
  result = np.asarray(out.tokens)
  assert np.all((result >= 0) & (result < lib.SAMPLABLE))
  _check_accounting(out, _generated(num_prompt), 3)


def test_banned_ids(model, ragged):
  cfg, params = model
  tokens, ranks, num_prompt = ragged
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(0), draft_len=3,
                        banned_ids=(0, 1))
  generated = ranks >= num_prompt[:, None]
  np.testing.assert_array_equal(np.asarray(out.tokens)[generated], 2)


# ----------------------------------------------------------------------------------------------------
# Validation: every bad argument raises ValueError naming it, before anything is compiled.

_GOOD = dict(tokens=np.zeros((2, 6), np.int32), ranks=np.tile(np.arange(6, dtype=np.int32), (2, 1)),
             num_prompt=np.array([1, 2], np.int32))


def _bad_calls():
  tokens, ranks = _GOOD["tokens"], _GOOD["ranks"]
  return {
      "unknown method": (dict(method="beam"), "method"),
      "draft_len 0": (dict(draft_len=0), "draft_len"),
      "draft_len -2": (dict(draft_len=-2), "draft_len"),
      "draft_len float": (dict(draft_len=2.5), "draft_len"),
      "temperature < 0": (dict(temperature=-0.5), "temperature"),
      "temperature nan": (dict(temperature=float("nan")), "temperature"),
      "top_p 0": (dict(top_p=0.0), "top_p"),
      "top_p > 1": (dict(top_p=1.5), "top_p"),
      "top_k < 0": (dict(top_k=-1), "top_k"),
      "top_k > V": (dict(top_k=lib.VOCAB + 1), "top_k"),
      "banned everything": (dict(banned_ids=(0, 1, 2)), "banned_ids"),
      "tokens 1-D": (dict(tokens=tokens[0]), "tokens"),
      "tokens float": (dict(tokens=tokens.astype(np.float32)), "tokens"),
      "shape mismatch": (dict(ranks=ranks[:, :5]), "same shape"),
      "ranks not a permutation": (dict(ranks=np.array([[0, 1, 2, 3, 4, 4]] * 2)), "permutation"),
      "prompt is everything": (dict(num_prompt=6), "num_prompt"),
      "prompt longer than N": (dict(num_prompt=7), "num_prompt"),
      "one row all prompt": (dict(num_prompt=np.array([1, 6])), "num_prompt"),
      "negative prompt": (dict(num_prompt=-1), "num_prompt"),
      "num_prompt wrong shape": (dict(num_prompt=np.array([1, 2, 3])), "num_prompt"),
      "N > max_len": (dict(tokens=np.zeros((2, 9), np.int32),
                           ranks=np.tile(np.arange(9, dtype=np.int32), (2, 1))), "max_len"),
      "prompt token out of range": (dict(tokens=np.full((2, 6), lib.VOCAB)), "prompt tokens"),
      "num_valid <= num_prompt": (dict(num_valid=2), "num_valid"),
      "num_valid > N": (dict(num_valid=7), "num_valid"),
      "rng wrong shape": (dict(rng=jax.random.split(jax.random.key(0), 3)), "rng"),
      "rng not a key": (dict(rng=np.float32(1.0)), "rng"),
  }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_bad_arguments_raise_before_compiling(model, monkeypatch, name):
  cfg, params = model
  overrides, pattern = _bad_calls()[name]

  def must_not_compile(*args, **kwargs):
    raise AssertionError("compiled despite a bad argument")

  monkeypatch.setattr(sampling, "_run", must_not_compile)
  call = {**_GOOD, "rng": jax.random.key(0), **overrides}
  positional = [call.pop(k) for k in ("tokens", "ranks", "num_prompt", "rng")]
  with pytest.raises(ValueError, match=pattern):
    sampling.sample(params, cfg, *positional, **call)


def test_good_arguments_reach_the_compiler(model, monkeypatch):
  """The control for the test above: the same call with good arguments does compile."""
  cfg, params = model
  reached = []
  monkeypatch.setattr(sampling, "_run", lambda *a, **k: reached.append(k))
  sampling.sample(params, cfg, _GOOD["tokens"], _GOOD["ranks"], _GOOD["num_prompt"],
                  jax.random.key(0), num_valid=np.array([5, 6]))
  # The default method, "auto", resolved for the batch: 2 rows of 6 positions.
  assert reached and reached[0]["sampler"].method == sampling.fastest_method(2)


def test_auto_resolves_by_backend_and_shape():
  """"auto" is an exact method chosen by speed alone: on the CPU sequential decoding (measured
  faster at every batch in the default order), on an accelerator fused ASSD."""
  assert sampling.fastest_method(1, backend_name="cpu") == "sequential"
  assert sampling.fastest_method(8, backend_name="cpu") == "sequential"
  assert sampling.fastest_method(1, backend_name="gpu") == "assd_fused"
  assert sampling.fastest_method(32, backend_name="tpu") == "assd_fused"
  cfg = lib.tiny_config()
  assert sampling.Sampler.create(cfg, method="auto", adaptive=True).method == "assd_fused"

"""Continuous batching (`num_slots`, streaming.py): the scheduler on a toy state, and the samplers
run as a stream of problems giving every problem exactly the result of its own batch-1 call."""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _sampling_testlib as lib
from asarm_jax import sampling
from asarm_jax import streaming
from asarm_jax.evals import report


@flax.struct.dataclass
class _Countdown:
  """A toy sampler state: each slot counts its problem's work down to 0."""
  left: jax.Array      # int32 [S]
  done: jax.Array      # int32 [S]: iterations advanced
  problem: jax.Array   # int32 [S]: which problem (as started)


def _run_countdown(work: np.ndarray, num_slots: int):
  problems = {"work": jnp.asarray(work, jnp.int32), "id": jnp.arange(len(work), dtype=jnp.int32)}
  def start(rows):
    return _Countdown(left=rows["work"], done=jnp.zeros_like(rows["work"]), problem=rows["id"])

  return jax.jit(lambda p: streaming.run(
      p, len(work), num_slots, start=start, start_one=start,
      advance=lambda s: s.replace(left=jnp.maximum(s.left - 1, 0),
                                  done=s.done + (s.left > 0)),
      active=lambda s: s.left > 0,
      put_row=lambda s, slot, one: jax.tree_util.tree_map(
          lambda rows, row: rows.at[slot].set(row[0]), s, one),
      result=lambda s, rows: {"done": s.done, "problem": s.problem, "id": rows["id"]}))(problems)


def _simulated_idle(work: list[int], num_slots: int) -> int:
  """Slot-iterations spent idle by the stream's rule: each iteration every slot advances; then
  each vacant slot takes the next problem (problems with no work finish at once)."""
  queue, slots, idle = list(work), [], 0
  while queue and len(slots) < num_slots:
    slots.append(queue.pop(0))

  def refill():
    for i, left in enumerate(slots):
      while left == 0 and queue:
        left = queue.pop(0)
      slots[i] = left

  refill()
  while any(slots):
    idle += sum(left == 0 for left in slots)
    slots[:] = [max(left - 1, 0) for left in slots]
    refill()
  return idle


@pytest.mark.parametrize("num_slots", [1, 2, 3, 7])
def test_the_scheduler_runs_every_problem_once_in_its_own_slot_row(num_slots):
  work = np.array([3, 0, 5, 1, 1, 4, 0])
  results, idle = _run_countdown(work, num_slots)
  np.testing.assert_array_equal(results["done"], work)  # each problem ran exactly its work
  np.testing.assert_array_equal(results["problem"], np.arange(len(work)))  # in its output row
  np.testing.assert_array_equal(results["id"], np.arange(len(work)))
  assert int(idle) == _simulated_idle(work.tolist(), num_slots)


def test_the_scheduler_rejects_more_slots_than_problems():
  with pytest.raises(ValueError, match="1 <= num_slots <= num_problems"):
    _run_countdown(np.array([1, 2]), 3)


# ----------------------------------------------------------------------------------------------------
# The samplers as streams.

_FIELDS = ("tokens", "nfe", "rounds", "accepted", "drafted", "ranks")


@pytest.fixture(scope="module")
def problems():
  """7 ragged rows with padding: (tokens, ranks, num_prompt, num_valid, keys)."""
  tokens, ranks, num_prompt, num_valid = lib.padded_ragged_batch(7, seed=3)
  return tokens, ranks, num_prompt, num_valid, jax.random.split(jax.random.key(5), 7)


@pytest.mark.parametrize("options,slot_counts", [
    (dict(method="sequential"), (3, 1)),
    (dict(method="assd_fused", draft_len=3), (3, 1)),
    pytest.param(dict(method="sequential", use_cache=False), (3,), marks=pytest.mark.slow),
    pytest.param(dict(method="assd", draft_len=3), (3,), marks=pytest.mark.slow),
    pytest.param(dict(method="assd", draft_len=3, drafter="ngram"), (3,), marks=pytest.mark.slow),
    pytest.param(dict(method="assd_fused", draft_len=3, adaptive=True), (3,),
                 marks=pytest.mark.slow),
    pytest.param(dict(method="assd", draft_len=2, adaptive_order=True), (3,),
                 marks=pytest.mark.slow),
], ids=["sequential", "fused", "uncached", "assd", "ngram", "fused_adaptive", "adaptive_order"])
def test_a_stream_gives_every_problem_its_batch_of_one_result(model, problems, options,
                                                              slot_counts):
  """Each problem samples with its own key, started alone and advanced with the other slots: the
  result of a stream through 3 slots (or 1) is the problem's batch-1 call's, field for field.
  Rows of one batch equal their batch-1 calls (test_sampling.py), so one batch of all the rows
  stands for them, except with the adaptive order: its order compares entropies, whose last bits
  can differ between a batch of 7 and a batch of 1."""
  cfg, params = model
  tokens, ranks, num_prompt, num_valid, keys = problems
  sampler = sampling.Sampler.create(cfg, **options)
  if options.get("adaptive_order"):
    singles = [sampler(params, tokens[r:r + 1], ranks[r:r + 1], num_prompt[r:r + 1],
                       keys[r:r + 1], num_valid=num_valid[r:r + 1]) for r in range(len(tokens))]
    expected = {f: np.concatenate([np.asarray(getattr(o, f)) for o in singles]) for f in _FIELDS}
  else:
    batch = sampler(params, tokens, ranks, num_prompt, keys, num_valid=num_valid)
    expected = {f: np.asarray(getattr(batch, f)) for f in _FIELDS}
  for slots in slot_counts:
    stream = sampler(params, tokens, ranks, num_prompt, keys, num_valid=num_valid,
                     num_slots=slots)
    for field in _FIELDS:
      np.testing.assert_array_equal(getattr(stream, field), expected[field],
                                    err_msg=f"{slots} slots, {field}")
    if slots == 1:
      assert stream.idle_fraction == 0.0 and int(stream.idle_iterations) == 0


def test_a_stream_idles_less_than_one_batch(model, problems):
  """The rows finish at different rounds: one batch of 7 idles from each row's end to the
  slowest row's, 3 slots only at the end of the stream; both count the same rounds."""
  cfg, params = model
  tokens, ranks, num_prompt, num_valid, keys = problems
  sampler = sampling.Sampler.create(cfg, method="sequential")
  batch = sampler(params, tokens, ranks, num_prompt, keys, num_valid=num_valid)
  stream = sampler(params, tokens, ranks, num_prompt, keys, num_valid=num_valid, num_slots=3)
  rounds = np.asarray(batch.rounds)
  assert batch.idle_fraction == pytest.approx(1 - rounds.sum() / (7 * rounds.max()))
  assert batch.idle_fraction > 0.2
  assert stream.row_iterations() == rounds.sum() + int(stream.idle_iterations)
  assert stream.idle_fraction < batch.idle_fraction
  stats = report.SamplingStats("sequential")
  stats.add_call(stream, num_valid - num_prompt, np.ones(7, bool), 1.0, 0.0)
  assert stats.idle_fraction == pytest.approx(stream.idle_fraction)


@pytest.mark.parametrize("num_slots", [0, -1, 1.5, True, "2"])
def test_a_bad_slot_count_is_named(model, problems, num_slots):
  cfg, params = model
  tokens, ranks, num_prompt, num_valid, keys = problems
  with pytest.raises(ValueError, match="num_slots must be None"):
    sampling.sample(params, cfg, tokens, ranks, num_prompt, keys, num_valid=num_valid,
                    num_slots=num_slots, method="sequential")

"""Continuous batching: P problems through S < P slots of one jitted while loop.

A batch of rows loops until its slowest row is done, so rows that finish early idle (the idle
fraction of `sampling.SampleOutput`). Here a slot whose problem is finished is handed the next one
at once: the loop runs until every problem is done and only the last problems leave slots idle.

The scheduler is generic over the sampler's state; `sampling.py` supplies what it means to start
problems, advance every slot one iteration, move one started problem into a slot, and read a slot's
result. A slot's problem is started alone (a batch of one: its prefill forward) and then advances
with the other slots, so each problem consumes only its own PRNG stream, as a row of a batch does.

Order of events in one loop iteration: every slot advances (finished ones are carried unchanged by
`advance`); then, until no slot is vacant or no problem is left: every finished slot's result is
written to its problem's output row, and one vacant slot is given the next problem.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

State = Any     # the sampler's loop state: a pytree whose leaves have S rows (or are shared)
Problems = Any  # a pytree of per-problem inputs, every leaf with P rows


@flax.struct.dataclass
class _Slots:
  """The stream's loop carry."""
  state: State             # [S] rows: the slots' sampler state
  problem: jax.Array       # int32 [S]: the problem each slot holds; P when vacant and flushed
  next_problem: jax.Array  # int32 []: the next problem to start
  results: Any             # pytree, every leaf [P, ...]: finished problems' results
  idle: jax.Array          # int32 []: slot-iterations spent on finished problems


def _row(tree, index):
  """Row `index` (traced) of every leaf, kept as a batch of one."""
  return jax.tree_util.tree_map(lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, index, 1), tree)


def run(problems: Problems, num_problems: int, num_slots: int, *,
        start: Callable[[Problems], State],
        start_one: Callable[[Problems], State],
        advance: Callable[[State], State],
        active: Callable[[State], jax.Array],
        put_row: Callable[[State, jax.Array, State], State],
        result: Callable[[State, Problems], Any]) -> tuple[Any, jax.Array]:
  """Runs every problem to completion through `num_slots` slots.

  Args:
    problems: the inputs, every leaf [P, ...] with P = num_problems.
    num_problems, num_slots: P and S (static, 1 <= S <= P).
    start: problems [S] -> the first slots' started state [S].
    start_one: a problem [1] -> its started state [1], to be put into a vacant slot.
    advance: state [S] -> state [S], one loop iteration (finished slots carried unchanged).
    active: state [S] -> bool [S], the slots whose problem is unfinished.
    put_row: (state [S], slot index, started state [1]) -> state [S] with that slot replaced.
    result: (state [S], their problems [S]) -> the slots' results, a pytree of [S, ...] leaves.

  Returns:
    (results: the pytree of `result` with P rows in problem order; idle: int32 [], the
    slot-iterations that advanced a finished problem or a vacant slot).
  """
  if not 1 <= num_slots <= num_problems:
    raise ValueError(f"need 1 <= num_slots <= num_problems; got {num_slots} and {num_problems}")
  first = jax.tree_util.tree_map(lambda leaf: leaf[:num_slots], problems)
  state = start(first)
  shapes = jax.eval_shape(result, state, first)
  results = jax.tree_util.tree_map(
      lambda s: jnp.zeros((num_problems, *s.shape[1:]), s.dtype), shapes)
  slots = _Slots(state=state, problem=jnp.arange(num_slots, dtype=jnp.int32),
                 next_problem=jnp.int32(num_slots), results=results, idle=jnp.int32(0))

  def flush(slots: _Slots) -> _Slots:
    """Writes every finished slot's result and marks the slot flushed."""
    done = ~active(slots.state) & (slots.problem < num_problems)  # [S]
    owners = jnp.minimum(slots.problem, num_problems - 1)
    rows = result(slots.state, jax.tree_util.tree_map(lambda leaf: leaf[owners], problems))
    target = jnp.where(done, slots.problem, num_problems)  # out of range: dropped
    results = jax.tree_util.tree_map(lambda out, row: out.at[target].set(row, mode="drop"),
                                     slots.results, rows)
    return slots.replace(results=results, problem=jnp.where(done, num_problems, slots.problem))

  def refill_one(slots: _Slots) -> _Slots:
    """Flushes, then starts the next problem in the first vacant slot."""
    slots = flush(slots)
    vacant = ~active(slots.state)
    slot = jnp.argmax(vacant)  # callers ensure one exists
    started = start_one(_row(problems, slots.next_problem))
    return slots.replace(state=put_row(slots.state, slot, started),
                         problem=slots.problem.at[slot].set(slots.next_problem),
                         next_problem=slots.next_problem + 1)

  def can_refill(slots: _Slots) -> jax.Array:
    return jnp.any(~active(slots.state)) & (slots.next_problem < num_problems)

  def refill(slots: _Slots) -> _Slots:
    return flush(jax.lax.while_loop(can_refill, refill_one, slots))

  def body(slots: _Slots) -> _Slots:
    idle = jnp.sum(~active(slots.state)).astype(jnp.int32)
    slots = slots.replace(state=advance(slots.state), idle=slots.idle + idle)
    # Most iterations finish no problem: then there is nothing to write or start.
    return jax.lax.cond(jnp.any(~active(slots.state)), refill, lambda unchanged: unchanged, slots)

  slots = jax.lax.while_loop(lambda s: jnp.any(active(s.state)), body, refill(slots))
  return slots.results, slots.idle

"""The rules of speculative sampling shared by ASSD and fused rounds, and why they are exact.

Everything here is pure jnp on fixed shapes: B rows, K draft slots, V tokens.

## Recorded proposals are enough
Decode ranks in order. When rank r is decided, let D_{<r} be the tokens decided below it and
q_r = q(. | D_{<r}) the target conditional (the model's processed law at rank r). The sampler holds
a proposal x~_r and the law p_r it was drawn from. Keep x~_r with probability min(1, q_r(x~_r) /
p_r(x~_r)) (a fresh uniform), otherwise draw rank r from normalize(max(q_r - p_r, 0)) (fresh
randomness). If, given D_{<r} and p_r, x~_r ~ p_r, the decided token is distributed as q_r given
D_{<r} (the usual speculative-sampling identity: min(p, q) + (1 - sum min(p, q)) * residual = q),
and by the chain rule over ranks the decided sequence has the sequential law. So the one condition
is:

  (*) given everything the sampler knew when it drew x~_r (F_r, which fixes p_r) and the decisions
      below rank r, x~_r is still distributed as p_r.

(*) holds when nothing that influences a decision below rank r depends on x~_r. In our samplers
information only flows upward in rank: every row of every forward sees only content of lower rank
than the rank it serves (a verify row at rank s sees ranks < s; a draft or proposal row at rank
s >= h sees ranks < h <= s). So the decisions below r, their q's, and the proposals, uniforms and
residual draws used for them are functions of F_r and of randomness independent of x~_r. Which of
several proposals drawn for rank r is the one finally tested is decided by rejections below r only,
so it does not depend on x~_r either.

## ASSD (method "assd")
All drafts of a round see exactly the decided ranks < n; x~_n's law p_0 *is* q_n (the same row of
the model), so rank n is kept outright (exact in floating point too; see sampling.py).

## Fused rounds (method "assd_fused")
One forward per round verifies the window's proposals at ranks n..n+m-1 (verify rows: ranks < own
rank, with the proposals written in) and proposes ranks n+m..n+m+K-1 (rows that see every rank
< n+m, the current proposals included). After keeping a proposals:
- all m kept: the window becomes the new proposals; the one at rank n+m saw exactly the decided
  ranks < n+m, so its law is q_{n+m} and it is kept outright next round (`first_exact`);
- rank n+a rejected and resampled: the window becomes the old proposals for ranks n+a+1..n+m-1
  followed by the new ones, K in all (`refill`). The old ones were drawn before this round's
  decisions; the new ones saw the rejected token, but were drawn from recorded laws with their own
  randomness, and no decision below their ranks ever depends on them, so (*) holds for both. Their
  first proposal is not exact, so it goes through the min(1, q/p) test like every other.
The laws p of every proposal travel with it (`draft_probs`, indexed by rank offset from
num_decided), so the test always uses the law the proposal was actually drawn from.

## Adaptive draft length
The number of slots a round tests, k in [1, K], is a function of earlier rounds' acceptance outcomes
only, so given the past it is fixed before the round's proposals, uniforms and residual draws: the
argument above holds conditionally on k, hence unconditionally. Discarding proposals a smaller k
leaves untested depends on k only.

What it can buy: shapes are static, so a smaller k saves no compute, and in ASSD an extra slot never
costs NFE (it only adds expected tokens to a round of the same 2 forwards). A shorter k can only pay
where a round's cost grows with k. Measured with the trained default model on held-out text (50%
and 90% hidden), adaptive K = 8 needed 11-25% more NFE than a fixed k = 8, in ASSD and in fused
rounds alike, so it is off by default.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Verdict:
  """The outcome of testing one round's drafts."""
  kept: jax.Array      # bool [B, K]: the leading run of kept drafts
  num_kept: jax.Array  # int32 [B]: a, the length of that run
  rejected: jax.Array  # bool [B]: a < m, so rank n + a is resampled
  residual: jax.Array  # float32 [B, 1, V]: the law to resample slot a from (where rejected)


def pick_slots(values: jax.Array, index: jax.Array) -> jax.Array:
  """values[b, index[b, j]] along axis 1: values [B, K, ...], index [B, J] -> [B, J, ...]."""
  index = index.reshape(index.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, index, axis=1)


def token_probs(probs: jax.Array, tokens: jax.Array) -> jax.Array:
  """probs [B, K, V] at tokens [B, K] -> [B, K]."""
  return jnp.take_along_axis(probs, tokens[:, :, None], axis=-1)[..., 0]


def accept(p: jax.Array, q: jax.Array, drafts: jax.Array, u: jax.Array, num_drafts: jax.Array,
           keep_first: jax.Array) -> Verdict:
  """Speculative acceptance of a round's drafts in slot (rank) order.

  Args:
    p: float32 [B, K, V], the laws the drafts were drawn from.
    q: float32 [B, K, V], the target laws (slot j given the decided ranks and drafts 0..j-1).
    drafts: int32 [B, K].
    u: float32 [B, K], fresh uniforms in [0, 1).
    num_drafts: int32 [B], m: slots >= m are not part of the round.
    keep_first: bool [B]: slot 0 is exact (p_0 is the target conditional) and kept outright.

  Returns:
    Verdict. Where no draft is rejected the residual is meaningless.
  """
  draft_len = drafts.shape[1]
  slots = jnp.arange(draft_len)[None, :]
  p_x = token_probs(p, drafts)
  q_x = token_probs(q, drafts)
  ok = u < q_x / jnp.where(p_x > 0, p_x, 1.0)  # p_x > 0 as x ~ p
  ok = ok | ((slots == 0) & keep_first[:, None])
  ok = ok & (slots < num_drafts[:, None])
  kept = jnp.cumprod(ok, axis=1).astype(bool)
  num_kept = jnp.sum(kept, axis=1, dtype=jnp.int32)
  # The first rejected slot a draws from normalize(max(q_a - p_a, 0)). Where q_a <= p_a everywhere
  # in floating point (possible only through rounding) it falls back to q_a.
  first_out = jnp.minimum(num_kept, draft_len - 1)[:, None]  # [B, 1]
  q_a = pick_slots(q, first_out)  # [B, 1, V]
  residual = jnp.maximum(q_a - pick_slots(p, first_out), 0.0)
  mass = jnp.sum(residual, axis=-1, keepdims=True)
  residual = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), q_a)
  return Verdict(kept=kept, num_kept=num_kept, rejected=num_kept < num_drafts, residual=residual)


def refill(old_tokens: jax.Array, old_probs: jax.Array, new_tokens: jax.Array,
           new_probs: jax.Array, shift: jax.Array, num_tested: jax.Array
           ) -> tuple[jax.Array, jax.Array]:
  """The next window of K proposals after a fused round.

  The old window holds proposals for ranks n..n+K-1, the new proposals are for ranks n+m..n+m+K-1.
  The next window starts at rank n + shift (shift = decided this round) and takes slot i from the
  old window while n + shift + i < n + m, from the new proposals after that.

  Args:
    old_tokens: int32 [B, K]; old_probs: float32 [B, K, V] (the round's window).
    new_tokens: int32 [B, K]; new_probs: float32 [B, K, V] (this round's proposals).
    shift: int32 [B], in [0, m].
    num_tested: int32 [B], m.

  Returns:
    (tokens int32 [B, K], probs float32 [B, K, V]) for ranks n+shift..n+shift+K-1.
  """
  draft_len = old_tokens.shape[1]
  index = shift[:, None] + jnp.arange(draft_len)[None, :]  # [B, K] into the old window
  from_old = index < num_tested[:, None]
  index = jnp.where(from_old, index, draft_len + index - num_tested[:, None])  # into old ++ new
  tokens = jnp.take_along_axis(jnp.concatenate([old_tokens, new_tokens], axis=1), index, axis=1)
  probs = pick_slots(jnp.concatenate([old_probs, new_probs], axis=1), index)
  return tokens, probs


@dataclasses.dataclass(frozen=True)
class Rules:
  """The acceptance and refill rules a sampler applies: the exact ones above unless told otherwise.

  A field of the frozen `sampling.Sampler`, so it takes part in its hash. The tests pass
  deliberately wrong rules here to show that the exactness checks fail on them; nothing in the
  library ever does.
  """
  accept: Callable[..., Verdict] = accept
  refill: Callable[..., tuple[jax.Array, jax.Array]] = refill


EXACT = Rules()


# ----------------------------------------------------------------------------------------------------
# Adaptive draft length.


@flax.struct.dataclass
class AcceptanceStats:
  """Discounted counts of speculative tests per row (outright keeps are not tests)."""
  passes: jax.Array  # float32 [B]
  tests: jax.Array   # float32 [B]

  # A prior worth PRIOR_TESTS tests at rate PRIOR_RATE: a new row starts with long drafts.
  PRIOR_RATE = 0.8
  PRIOR_TESTS = 2.0
  DECAY = 0.7  # per round: the estimate follows the last few rounds

  @classmethod
  def initial(cls, batch: int) -> "AcceptanceStats":
    return cls(passes=jnp.zeros((batch,), jnp.float32), tests=jnp.zeros((batch,), jnp.float32))

  def observe(self, passes: jax.Array, tests: jax.Array) -> "AcceptanceStats":
    """Adds one round's outcome (int [B] each)."""
    return AcceptanceStats(passes=self.DECAY * self.passes + passes.astype(jnp.float32),
                           tests=self.DECAY * self.tests + tests.astype(jnp.float32))

  def rate(self) -> jax.Array:
    """The estimated acceptance probability of one test, float32 [B] in (0, 1)."""
    prior = self.PRIOR_TESTS
    return (self.passes + prior * self.PRIOR_RATE) / (self.tests + prior)


def round_tests(verdict: Verdict, keep_first: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(passes, tests) int32 [B] of a round: the slots tested with min(1, q/p), up to and including
  the first rejection, and how many of them passed."""
  outright = keep_first.astype(jnp.int32) * (verdict.num_kept > 0)
  passes = verdict.num_kept - outright
  return passes, passes + verdict.rejected.astype(jnp.int32)


def choose_draft_len(stats: AcceptanceStats, max_len: int, free_first: jax.Array) -> jax.Array:
  """k per row, int32 [B] in [1, max_len]: the free first slot (if any) plus the expected number of
  tested slots a round decides when nothing truncates it, 1 / (1 - rate) (a run of passes ended by a
  rejection, whose slot is resampled), rounded to the nearest integer."""
  useful = jnp.floor(1.0 / (1.0 - stats.rate()) + 0.5)
  k = free_first.astype(jnp.float32) + useful
  return jnp.clip(k, 1, max_len).astype(jnp.int32)


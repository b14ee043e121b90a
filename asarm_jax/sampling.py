"""Exact samplers for AS-ARMs: sequential decoding, ASSD (model or n-gram drafts) and fused ASSD, as
one jitted while_loop.

Every sampler draws from the same law: the product, in rank order, of the model's conditionals
q(x_{rank n} | ranks < n), each passed through the same logit processing
(`processors.probabilities`).

Sequential: one forward per generated token. The query row at the position of rank n sees exactly
the positions of rank < n, so the tokens at undecided positions never matter.

ASSD (Any-Subset Speculative Decoding, arXiv 2504.20456), one round for a row with n decided ranks
and m = min(k, num_valid - n) ranks left to draft:
  1. draft forward: the query rows at ranks n..n+m-1 each see exactly the decided positions; p_j is
     their processed law. Draw every x_j ~ p_j independently.
  2. verify forward with the drafts written in: q_j is the processed law of rank n+j given ranks
     < n+j, i.e. given the decided tokens and x_0..x_{j-1}.
  3. in rank order, keep x_j with probability min(1, q_j(x_j) / p_j(x_j)); at the first rejection
     draw the token of that rank from normalize(max(q_j - p_j, 0)) and end the round. No bonus
     token.
Rank n's draft is always kept: its draft row sees exactly ranks < n, so p_0 *is* the model's
conditional at rank n (the same as q_0 in exact arithmetic). Keeping it outright, instead of testing
it against the verify pass's q_0, makes the rule exact in floating point as well (a test of q_0
against p_0 could reject on rounding noise and then resample from a residual made only of noise).
When m == 1 the verify forward is therefore useless and is skipped (this is the paper's "last token
with the draft pass alone").

Fused ASSD (method "assd_fused"): one forward per round both verifies the current proposals for
ranks n..n+m-1 and proposes ranks n+m..n+m+K-1 (query rows that see every rank < n+m, the current
proposals included). Proposals outlive a rejection: after rank n+a is resampled the next window is
the old proposals for ranks n+a+1..n+m-1 followed by the new ones. Every proposal carries the law it
was drawn from, and every proposal goes through the min(1, q/p) test, except the first proposal of a
window whose row saw exactly the decided ranks (the first forward's drafts, or the proposal after a
round that kept everything): that one is the model's conditional and is kept outright, as in ASSD.
Why proposals drawn before, or conditioned on, a later-rejected token are still exact proposals is
written out in `speculation.py`.

Context n-gram drafts (`drafter="ngram"`, method "assd"): the k drafts of a round come from bigram
counts of the row's decided tokens (ngram.py), drawn slot by slot (a slot whose left neighbour is
drafted earlier in the round is conditioned on that draft), with their laws recorded. One verify
forward per round computes q at every slot; the acceptance is the same, except that slot 0 is
tested too (its proposal is not the model's conditional). A round costs 1 NFE and decides >= 1
token, so NFE == rounds <= tokens. The proposals depend only on decided tokens and earlier drafts
of the round, so speculation.py's condition (*) holds and the law is exact.

Lossy options (off by default; `Sampler.lossy`, and `Sampler.name` ends in "(lossy)"): `r_atol > 0`
keeps a draft when u < q/p + r_atol, and `draft_only_temperature` computes the verify laws q at
temperature 1 while the drafts use `temperature`. Neither draws from the law above; both exist to
reproduce the paper code's ablations.

Adaptive order (`adaptive_order=True`, method "assd" with model drafts; off by default): NOT the
law of a fixed order. Each round's draft forward computes the query rows of every undecided
position (each sees exactly the decided positions); the undecided positions are then re-ranked by
the entropy of the model's law there (temperature 1, banned ids removed), lowest first, ties left to
right, and the round drafts and verifies the first k of that order as usual. Given the order chosen,
the round is exact (its drafts and verification are those of a fixed order), but the order depends
on the decided tokens, so the output law is that of "decode the most certain position next", not
of any fixed order; with k == 1 it is exactly that sequential process. `SampleOutput.ranks` holds
the order the tokens were decided in. A draft forward computes N query rows instead of K.

Adaptive draft length (`adaptive=True`, ASSD and fused): `draft_len` is the static maximum K and
each row chooses its k in [1, K] every round from a discounted count of its past acceptance tests
(`speculation.choose_draft_len`). Shapes stay static; slots past k are computed and ignored. k
depends on the past only, so exactness is unaffected.

Order-aware cache (`use_cache=True`, the default): a decided token's content keys/values depend only
on lower ranks, so the loop keeps them in a `KVCache` and a forward computes content rows only for
ranks [num_cached, horizon) (see cache.py) and query rows only for the ranks it drafts, verifies or
proposes. The first forward also computes the prompt's content rows (its "prefill"), so the cache
costs no extra forward. Per method, the rows after the first forward are:
  sequential: content = the token decided last step (<= 1 row); query = rank n.
  ASSD:       draft: content = the token resampled last round (<= 1 row); query = ranks n..n+K-1.
              (At batch 1 these one-row forwards compute a second, padding content row:
              `_MIN_CONTENT_ROWS_OF_ONE`.)
              verify: content = the drafts n..n+m-1; query = ranks n..n+K-1. Kept drafts stay
                      cached.
  fused:      content = [num_cached, n+m) (<= K+1 rows); query = 2K rows (verify + propose).
Outputs equal the uncached sampler's up to float rounding in the logits.

NFE accounting (forward passes a row needs; a batched forward counts once for every row it serves):
  ASSD: a round with m >= 2 drafts costs 2 NFE and decides at least 2 tokens (x_0 is kept; then
  either x_1 is kept, or x_1 is rejected and rank n+1 is resampled); a round with m == 1 costs 1 NFE
  and decides 1. Hence, deterministically for every row, NFE <= the number of tokens it generates
  (the paper's bound: at most N - num_prompt forwards), rounds <= NFE <= 2 * rounds, and for k == 1
  ASSD is sequential decoding (1 NFE per token).
  Fused: the first forward (drafts only) costs 1 NFE and decides nothing; every round after it costs
  1 NFE and decides >= 1 token (slot 0 is kept, or rejected and resampled), except a round whose
  only rank left is an exact first proposal: it is kept with no forward (0 NFE). Proof of NFE <=
  tokens: Phi = tokens - NFE + [first proposal exact] starts at 0 - 1 + 1 = 0 and never decreases: a
  round with an exact first proposal and m >= 2 decides >= 2 tokens (slot 0 outright, slot 1 kept or
  resampled) for 1 NFE and loses at most the flag; a round without it decides >= 1 for 1 NFE; a
  round with m == 1 and an exact first proposal decides 1 for 1 NFE and, having kept everything,
  gets the flag back (or finishes with 0 NFE). A finished row has the flag cleared, so tokens - NFE
  = Phi >= 0. Also rounds <= tokens and NFE <= rounds + 1.
`accepted` counts kept drafts (outright ones included), so tokens generated = accepted + (rounds
that ended in a rejection); `drafted` counts the draft slots the rounds put to use (sum of m), so
drafted / rounds is the mean draft length.

API: `Sampler.create(cfg, method=..., draft_len=..., temperature=...)` validates the static choices
once and returns a frozen, hashable `Sampler`; calling it on params and a batch validates the batch
(`Sampler.batch`) and runs one jitted program (`_run`) per sampler and batch shape. `sample` is the
one-call form.

Batches are ragged: every row has its own prompt length, `num_valid` and progress; the loop runs
while any row is unfinished, and a finished row's state is carried through unchanged (bitwise).
With `num_slots` < B (continuous batching, streaming.py) the B rows are problems fed through
`num_slots` slots instead: a slot whose problem is done takes the next one, started alone (its own
prefill forward, into a one-row cache) and then advanced with the others. Each
row owns a PRNG stream (split from `rng`), consumed only while the row is active, so a row's result
does not depend on the other rows of its batch. Every iteration splits a row's key into (next,
draft, accept, resample) in every sampler, so ASSD with k == 1 reproduces sequential decoding token
for token.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import backend
from asarm_jax import cache as cache_lib
from asarm_jax import masks as masks_lib
from asarm_jax import ngram
from asarm_jax import processors
from asarm_jax import speculation
from asarm_jax import streaming
from asarm_jax.cache import KVCache
from asarm_jax.model import ASARM, ModelConfig

METHODS = ("assd", "assd_fused", "sequential")
# Where ASSD's proposals come from: the model's draft forward, or the context n-gram table
# (ngram.py; one verify forward per round, method "assd" only).
DRAFTERS = ("model", "ngram")
AUTO = "auto"  # the exact method measured fastest for the batch size on this backend
DEFAULT_METHOD = AUTO  # what `sample` and the applications use unless told otherwise
# k. Fused rounds with the trained default model on a 2-core CPU (N = 512, batch 1, infill order,
# cache on; benchmarks/results): k = 3 was the fastest at 50% hidden (1.29x sequential; k = 2 1.22x,
# k = 4 1.25x) and within 3% of k = 2 at 90% (1.14x vs 1.17x); k = 5 was 0.96-1.20x. (Measured
# before the sequential step became 2.5x cheaper; since then no k beats it on this CPU in that
# order, and k = 2 and 3 are within the host's noise of each other.)
DEFAULT_DRAFT_LEN = 3
# "auto" on the CPU: the same model and setting after the flat-weight projections and the padding
# content row at batch 1 made a cached sequential step 0.35-0.41 ms (from about 1 ms), interleaved
# runs, medians of 9: fused k = 2 / sequential tokens/s 0.77x at 90% hidden and 0.92x at 50%
# (k = 3 0.65x and 0.83x, ASSD k = 5 0.62x and 0.66x); the sampling benchmark's batches 8 and 32
# 0.5-0.7x. On the CPU a fused round's 3K + 1 rows per batch row are matmul work (about 50 us a
# row at the default size), so "auto" is sequential decoding there (`backend.CPU.fused_max_batch`
# = 0). Fused ASSD still pays on this CPU where a round keeps nearly every draft: a random or
# spread order at 90% hidden, 1.2-1.8x with k = 5 or 8 depending on the training order
# (benchmarks/results/orders.md); pass method="assd_fused" for those.


def is_lossy(r_atol: float, draft_only_temperature: bool) -> bool:
  """Whether these option values make a sampler lossy (see `Sampler.create`)."""
  return r_atol > 0 or draft_only_temperature


def fastest_method(batch_size: int, backend_name: str | None = None) -> str:
  """The exact method `method="auto"` resolves to for a batch of `batch_size` rows on the XLA
  backend `backend_name` (default: the choices in force, `backend.current()`). On the CPU:
  sequential decoding (the measurements above). Accelerators get fused ASSD at every batch: their
  forwards stay bound by reading weights and cache far longer, but that choice is not measured on
  one yet."""
  choices = backend.for_backend(backend_name) if backend_name else backend.current()
  if choices.fused_max_batch is not None and batch_size > choices.fused_max_batch:
    return "sequential"
  return "assd_fused"


@flax.struct.dataclass
class SampleOutput:
  """What `sample` returns."""
  tokens: jax.Array    # int32 [B, N]: prompt kept, ranks in [num_prompt, num_valid) generated
  nfe: jax.Array       # int32 [B]: forward passes the row needed
  rounds: jax.Array    # int32 [B]: loop iterations the row was active (== nfe for sequential)
  accepted: jax.Array  # int32 [B]: drafts kept, outright ones included (0 for sequential)
  drafted: jax.Array   # int32 [B]: draft slots the rounds used, sum of m (0 for sequential)
  ranks: jax.Array     # int32 [B, N]: the order the tokens were decided in (the input order
  #                      unless `adaptive_order`)
  # int32 []: with `num_slots` (continuous batching), the slot-iterations spent on finished
  # problems; None for one batch, whose rows idle from their last round to the slowest row's.
  idle_iterations: jax.Array | None = None

  def row_iterations(self) -> int:
    """Row-iterations the call's loop ran: B x the most rounds for one batch; with `num_slots`,
    every row's rounds plus the idle slot-iterations."""
    rounds = np.asarray(self.rounds)
    if self.idle_iterations is None:
      return int(rounds.size * rounds.max(initial=0))
    return int(rounds.sum()) + int(self.idle_iterations)

  @property
  def idle_fraction(self) -> float:
    """The share of the row-iterations spent on rows already finished: a batch loops until its
    slowest row is done (0 for one row, or rows that finish together); continuous batching
    (`num_slots`) hands a finished slot the next problem, so only the last problems idle."""
    return float(1.0 - np.asarray(self.rounds).sum() / max(self.row_iterations(), 1))


@flax.struct.dataclass
class _LoopState:
  """The while_loop carry. Every field keeps its shape; K = draft_len (1 for sequential)."""
  tokens: jax.Array        # int32 [B, N]: decided tokens; mask id at undecided positions
  ranks: jax.Array         # int32 [B, N]: the order (constant; adaptive_order re-ranks undecided)
  by_rank: jax.Array       # int32 [B, N]: position of each rank (kept in step with `ranks`)
  num_prompt: jax.Array    # int32 [B] (constant)
  num_valid: jax.Array     # int32 [B]: ranks >= num_valid are padding, never generated (constant)
  num_decided: jax.Array   # int32 [B]: ranks < num_decided are decided
  cache: KVCache | None    # per-layer keys/values (see cache.py); None without a cache
  num_cached: jax.Array    # int32 [B]: ranks < num_cached have valid cache entries
  # ASSD: the latest drafts; sequential: the latest sample; fused: the pending proposals for ranks
  # num_decided + j, j < K. Always with the processed laws they were drawn from.
  draft_tokens: jax.Array  # int32 [B, K]
  draft_probs: jax.Array   # float32 [B, K, V]
  first_exact: jax.Array   # bool [B]: fused: proposal 0 saw exactly the decided ranks
  draft_len: jax.Array     # int32 [B]: k of the next round (K unless adaptive)
  stats: speculation.AcceptanceStats  # [B] each: the adaptive draft length's memory
  nfe: jax.Array           # int32 [B]
  rounds: jax.Array        # int32 [B]
  accepted: jax.Array      # int32 [B]
  drafted: jax.Array       # int32 [B]
  keys: jax.Array          # PRNG key [B]: one stream per row

  @property
  def active(self) -> jax.Array:
    return self.num_decided < self.num_valid  # bool [B]


# ----------------------------------------------------------------------------------------------------
# The forward pass. Every sampler's forward is "query rows at these ranks, each seeing the ranks
# below min(its rank, horizon)"; with a cache only the content rows [num_cached, horizon) are
# computed.


def _forward(params, cfg: ModelConfig, state: _LoopState, tokens, horizon, query_ranks,
             num_content: int):
  """Query-stream logits and the updated cache.

  Args:
    params, cfg: the model.
    state: gives the order, the cache and num_cached.
    tokens: int32 [B, N], the decided tokens and the drafts below `horizon` written in.
    horizon: int32 [B]: a query row of rank r sees the ranks < min(r, horizon) (a density row when
      r < horizon, a parallel-draft row otherwise); no row sees a rank >= horizon.
    query_ranks: int32 [B, Q] (clipped to N - 1 for the lookup; rows past the end are junk).
    num_content: static bound on horizon - num_cached over active rows (cached forward only).

  Returns:
    (logits float32 [B, Q, V], cache with the new content rows written, or None without a cache).
  """
  length = tokens.shape[1]
  query_positions = _pick(state.by_rank, jnp.minimum(query_ranks, length - 1))  # [B, Q]
  model = ASARM(cfg)
  if state.cache is None:
    content_mask, query_mask = masks_lib.draft_masks(state.ranks, horizon, state.num_prompt)
    logits = model.apply({"params": params}, tokens, content_mask, query_mask, query_positions,
                         method=ASARM.forward)
    return logits, None
  positions, content_ranks = cache_lib.content_rows(state.by_rank, state.num_cached, horizon,
                                                    num_content, state.active)  # [B, S]
  content_mask, query_mask = cache_lib.row_masks(state.ranks, state.num_prompt, horizon,
                                                 content_ranks, query_ranks)
  content_tokens = jnp.take_along_axis(tokens, jnp.minimum(positions, length - 1), axis=1)
  return model.apply({"params": params}, state.cache, content_tokens, positions, content_mask,
                     query_positions, query_mask, method=ASARM.extend)


# ----------------------------------------------------------------------------------------------------
# Loop bodies. Each returns the next state for every row; `_loop` keeps finished rows unchanged.


def _split_rows(keys: jax.Array, num: int) -> jax.Array:
  """Splits each row's key: [B] -> [B, num]."""
  return jax.vmap(lambda key: jax.random.split(key, num))(keys)


def _sample_rows(keys: jax.Array, probs: jax.Array) -> jax.Array:
  """One token per law, each row with its own key: keys [B], probs [B, K, V] -> int32 [B, K]."""
  return jax.vmap(processors.sample_from)(keys, probs)


def _uniforms(keys: jax.Array, num: int, sampler: Sampler) -> jax.Array:
  """The acceptance uniforms, num per row: keys [B] -> float32 [B, num]. A draft is kept when
  u < q/p; the lossy `r_atol` keeps it when u < q/p + r_atol, i.e. it lowers u by r_atol."""
  u = jax.vmap(lambda key: jax.random.uniform(key, (num,)))(keys)
  return u - sampler.r_atol if sampler.r_atol else u


_pick = speculation.pick_slots  # values [B, K, ...] at index [B, J] along axis 1 -> [B, J, ...]


def _write(tokens: jax.Array, positions: jax.Array, values: jax.Array, where: jax.Array):
  """tokens [B, N] with values [B, J] written at positions [B, J] where `where` [B, J] holds."""
  rows = jnp.arange(tokens.shape[0])[:, None]
  return tokens.at[rows, jnp.where(where, positions, tokens.shape[1])].set(values, mode="drop")


def _decide(tokens: jax.Array, positions: jax.Array, drafts: jax.Array,
            verdict: speculation.Verdict, keys: jax.Array) -> jax.Array:
  """tokens [B, N] with a round's kept drafts [B, K] written at their positions [B, K], and the
  first rejected slot drawn from the residual with `keys` [B]."""
  fix = _sample_rows(keys, verdict.residual)  # [B, 1]
  first_out = jnp.minimum(verdict.num_kept, drafts.shape[1] - 1)[:, None]  # [B, 1]
  tokens = _write(tokens, positions, drafts, verdict.kept)
  return _write(tokens, _pick(positions, first_out), fix, verdict.rejected[:, None])


def _sequential_step(params, state: _LoopState, *, sampler: Sampler,
                     num_content: int) -> _LoopState:
  """Decides the token of rank num_decided: one forward."""
  length = state.tokens.shape[1]
  rank = jnp.minimum(state.num_decided, length - 1)[:, None]  # [B, 1]
  logits, cache = _forward(params, sampler.cfg, state, state.tokens, state.num_decided, rank,
                           num_content)
  probs = processors.probabilities(logits, sampler.sampling)  # [B, 1, V]
  keys = _split_rows(state.keys, 4)  # [B, 4]: the same schedule as an ASSD round
  token = _sample_rows(keys[:, 1], probs)  # [B, 1]
  return state.replace(
      tokens=_write(state.tokens, _pick(state.by_rank, rank), token, jnp.ones_like(token, bool)),
      num_decided=state.num_decided + 1,
      cache=cache,
      num_cached=state.num_decided,
      draft_tokens=token,
      draft_probs=probs,
      nfe=state.nfe + 1,
      rounds=state.rounds + 1,
      keys=keys[:, 0])


def _next_draft_len(state: _LoopState, verdict: speculation.Verdict, keep_first, free_first, *,
                    sampler: Sampler):
  """(stats, draft_len [B]) after a round: K, or the adaptive choice from the updated statistics."""
  if not sampler.adaptive:
    return state.stats, state.draft_len
  stats = state.stats.observe(*speculation.round_tests(verdict, keep_first))
  return stats, speculation.choose_draft_len(stats, sampler.draft_len, free_first)


def _finish_round(state: _LoopState, tokens, verdict: speculation.Verdict, drafts, p, num_drafts,
                  *, num_cached, cost, keep_first, key, sampler: Sampler) -> _LoopState:
  """The state after an ASSD round (model or n-gram drafts) that tested `drafts` [B, K] drawn
  from `p` [B, K, V] and decided `tokens` [B, N]; `cost` is the round's NFE per row."""
  stats, draft_len = _next_draft_len(state, verdict, keep_first, keep_first, sampler=sampler)
  return state.replace(
      tokens=tokens,
      num_decided=state.num_decided + verdict.num_kept + verdict.rejected.astype(jnp.int32),
      num_cached=num_cached,
      draft_tokens=drafts,
      draft_probs=p,
      draft_len=draft_len,
      stats=stats,
      nfe=state.nfe + cost,
      rounds=state.rounds + 1,
      accepted=state.accepted + verdict.num_kept,
      drafted=state.drafted + num_drafts,
      keys=key)


def _by_entropy(state: _LoopState, logits: jax.Array, sampler: Sampler) -> _LoopState:
  """`state` with its undecided valid positions re-ranked by the entropy of the model's law there
  (temperature 1, banned ids removed; `logits` [B, N, V] are every position's draft rows), lowest
  first, ties left to right. Decided and padding ranks keep their places."""
  untempered = processors.SamplingConfig(temperature=1.0, banned_ids=sampler.sampling.banned_ids)
  probs = processors.probabilities(logits, untempered)  # [B, N, V]
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0), axis=-1)  # [B, N]
  n = state.num_decided[:, None]
  undecided = (state.ranks >= n) & (state.ranks < state.num_valid[:, None])  # [B, N]
  block = jnp.where(state.ranks < n, 0, jnp.where(undecided, 1, 2))  # decided, undecided, padding
  within = jnp.where(undecided, entropy, state.ranks.astype(jnp.float32))
  by_rank = masks_lib.positions_in_block_order(block, within)  # [B, N]
  return state.replace(ranks=masks_lib.positions_by_rank(by_rank), by_rank=by_rank)


def _draft_forward(params, state: _LoopState, target: jax.Array, *, sampler: Sampler,
                   num_content: int) -> tuple[_LoopState, jax.Array]:
  """The draft forward of an ASSD round at ranks `target` [B, K]: (the state with the cache
  updated, and re-ranked with `adaptive_order`; the drafts' logits [B, K, V])."""
  n = state.num_decided
  if not sampler.adaptive_order:
    logits, cache = _forward(params, sampler.cfg, state, state.tokens, n, target, num_content)
    return state.replace(cache=cache, num_cached=n), logits
  # Every position's draft row (query rank >= n sees exactly ranks < n; the decided positions'
  # rows are computed and ignored), then the new order's first K.
  logits, cache = _forward(params, sampler.cfg, state, state.tokens, n, state.ranks, num_content)
  state = _by_entropy(state.replace(cache=cache, num_cached=n), logits, sampler)
  return state, _pick(logits, _pick(state.by_rank, target))  # [B, K, V]


def _assd_round(params, state: _LoopState, *, sampler: Sampler, num_content: int) -> _LoopState:
  """One ASSD round: draft forward, verify forward (skipped when m == 1), acceptance."""
  cfg, sampling, max_len = sampler.cfg, sampler.sampling, sampler.draft_len
  batch, length = state.tokens.shape
  n = state.num_decided
  slots = jnp.arange(max_len)[None, :]  # [1, K]
  num_drafts = jnp.clip(state.num_valid - n, 0, state.draft_len)  # [B] (m)
  in_round = slots < num_drafts[:, None]  # [B, K]: slots past m are computed but ignored
  target = jnp.minimum(n[:, None] + slots, length - 1)  # [B, K] ranks
  keys = _split_rows(state.keys, 4)  # [B, 4]: next, draft, accept, resample

  # 1. Draft: x_j ~ p_j for every slot, in parallel. Caches the rank resampled last round.
  state, logits = _draft_forward(params, state, target, sampler=sampler, num_content=num_content)
  positions = _pick(state.by_rank, target)  # [B, K]
  p = processors.probabilities(logits, sampling)  # [B, K, V]
  drafts = _sample_rows(keys[:, 1], p)  # [B, K]
  drafted = _write(state.tokens, positions, drafts, in_round)  # [B, N]

  # 2. Verify: q_j given the decided tokens and x_0..x_{j-1}. Skipped when no row drafts 2+.
  verified = jnp.any(state.active & (num_drafts > 1)) if max_len > 1 else jnp.bool_(False)
  if max_len == 1:
    q, u, cache = p, jnp.zeros((batch, 1)), state.cache  # x_0 is exact; nothing to verify
  else:
    def verify():
      logits, cache = _forward(params, cfg, state, drafted, n + num_drafts, target, max_len)
      return processors.probabilities(logits, sampler.target_sampling), cache  # [B, K, V]

    q, cache = jax.lax.cond(verified, verify, lambda: (p, state.cache))
    u = _uniforms(keys[:, 2], max_len, sampler)  # [B, K]
  # 3. Accept in rank order; the first slot is kept outright (see the module docstring).
  keep_first = jnp.ones((batch,), bool)
  verdict = sampler.rules.accept(p, q, drafts, u, num_drafts, keep_first)
  tokens = _decide(state.tokens, positions, drafts, verdict, keys[:, 3])
  # The verify pass computed the drafts' content rows; the kept ones are now decided.
  return _finish_round(state.replace(cache=cache), tokens, verdict, drafts, p, num_drafts,
                       num_cached=jnp.where(verified, n + verdict.num_kept, n),
                       cost=jnp.where(num_drafts > 1, 2, 1), keep_first=keep_first,
                       key=keys[:, 0], sampler=sampler)


def _ngram_round(params, state: _LoopState, *, sampler: Sampler, num_content: int) -> _LoopState:
  """One round with context n-gram drafts: drafts from the row's bigram table (ngram.py), one
  verify forward, acceptance. No draft is the model's conditional, so slot 0 is tested too."""
  cfg, max_len = sampler.cfg, sampler.draft_len
  batch, length = state.tokens.shape
  n = state.num_decided
  slots = jnp.arange(max_len)[None, :]  # [1, K]
  num_drafts = jnp.clip(state.num_valid - n, 0, state.draft_len)  # [B] (m)
  in_round = slots < num_drafts[:, None]  # [B, K]
  target = jnp.minimum(n[:, None] + slots, length - 1)  # [B, K] ranks
  positions = _pick(state.by_rank, target)  # [B, K]
  keys = _split_rows(state.keys, 4)  # [B, 4]: next, draft, accept, resample
  allowed = jnp.ones((cfg.vocab_size,), bool).at[jnp.array(sampler.sampling.banned_ids)].set(False)
  drafts, p = ngram.draft(keys[:, 1], state.tokens, state.ranks < n[:, None], positions, in_round,
                          allowed)  # [B, K], [B, K, V]
  drafted = _write(state.tokens, positions, drafts, in_round)  # [B, N]
  logits, cache = _forward(params, cfg, state, drafted, n + num_drafts, target, num_content)
  q = processors.probabilities(logits, sampler.target_sampling)  # [B, K, V]
  keep_first = jnp.zeros((batch,), bool)
  verdict = sampler.rules.accept(p, q, drafts, _uniforms(keys[:, 2], max_len, sampler),
                                 num_drafts, keep_first)
  tokens = _decide(state.tokens, positions, drafts, verdict, keys[:, 3])
  # The forward computed the drafts' content rows; the kept ones are now decided.
  return _finish_round(state.replace(cache=cache), tokens, verdict, drafts, p, num_drafts,
                       num_cached=n + verdict.num_kept, cost=1, keep_first=keep_first,
                       key=keys[:, 0], sampler=sampler)


def _fused_start(params, state: _LoopState, *, sampler: Sampler, num_content: int) -> _LoopState:
  """The first forward of fused ASSD: proposals for ranks n..n+K-1 that see exactly ranks < n."""
  length = state.tokens.shape[1]
  n = state.num_decided
  target = jnp.minimum(n[:, None] + jnp.arange(sampler.draft_len)[None, :], length - 1)  # [B, K]
  logits, cache = _forward(params, sampler.cfg, state, state.tokens, n, target, num_content)
  p = processors.probabilities(logits, sampler.sampling)  # [B, K, V]
  keys = _split_rows(state.keys, 4)  # [B, 4]: next, propose, -, -
  return state.replace(
      cache=cache, num_cached=n, draft_tokens=_sample_rows(keys[:, 1], p), draft_probs=p,
      first_exact=jnp.ones_like(state.first_exact), nfe=state.nfe + 1, keys=keys[:, 0])


def _fused_round(params, state: _LoopState, *, sampler: Sampler, num_content: int) -> _LoopState:
  """One fused round: a single forward verifies the window and proposes the next one."""
  cfg, max_len = sampler.cfg, sampler.draft_len
  length = state.tokens.shape[1]
  n = state.num_decided
  slots = jnp.arange(max_len)[None, :]  # [1, K]
  left = state.num_valid - n  # [B]
  num_tested = jnp.clip(left, 0, state.draft_len)  # [B] (m)
  in_round = slots < num_tested[:, None]  # [B, K]
  verify_ranks = jnp.minimum(n[:, None] + slots, length - 1)  # [B, K]
  propose_ranks = jnp.minimum((n + num_tested)[:, None] + slots, length - 1)  # [B, K]
  positions = _pick(state.by_rank, verify_ranks)  # [B, K]
  proposed = _write(state.tokens, positions, state.draft_tokens, in_round)  # [B, N]
  keep_first = state.first_exact
  # A row whose only rank left is an exact proposal needs no forward: it keeps it outright. The
  # forward runs unconditionally (only a batch's last round could skip it), but such a row is not
  # charged for it.
  needs_forward = state.active & ~(state.first_exact & (left == 1))  # [B]
  keys = _split_rows(state.keys, 4)  # [B, 4]: next, propose, accept, resample
  query_ranks = jnp.concatenate([verify_ranks, propose_ranks], axis=1)  # [B, 2K]
  logits, cache = _forward(params, cfg, state, proposed, n + num_tested, query_ranks, num_content)
  if sampler.target_sampling == sampler.sampling:
    probs = processors.probabilities(logits, sampler.sampling)  # [B, 2K, V]
    q, new_probs = probs[:, :max_len], probs[:, max_len:]
  else:  # the lossy draft-only temperature
    q = processors.probabilities(logits[:, :max_len], sampler.target_sampling)  # [B, K, V]
    new_probs = processors.probabilities(logits[:, max_len:], sampler.sampling)  # [B, K, V]
  u = _uniforms(keys[:, 2], max_len, sampler)  # [B, K]
  verdict = sampler.rules.accept(state.draft_probs, q, state.draft_tokens, u, num_tested,
                                 keep_first)
  tokens = _decide(state.tokens, positions, state.draft_tokens, verdict, keys[:, 3])

  shift = verdict.num_kept + verdict.rejected.astype(jnp.int32)  # [B]: ranks decided
  window_tokens, window_probs = sampler.rules.refill(
      state.draft_tokens, state.draft_probs, _sample_rows(keys[:, 1], new_probs), new_probs,
      shift, num_tested)
  first_exact = ~verdict.rejected & (n + shift < state.num_valid)  # the new proposal at rank n+m
  stats, draft_len = _next_draft_len(state, verdict, keep_first, first_exact, sampler=sampler)
  return state.replace(
      tokens=tokens,
      num_decided=n + shift,
      cache=cache,
      num_cached=n + verdict.num_kept,
      draft_tokens=window_tokens,
      draft_probs=window_probs,
      first_exact=first_exact,
      draft_len=draft_len,
      stats=stats,
      nfe=state.nfe + needs_forward.astype(jnp.int32),
      rounds=state.rounds + 1,
      accepted=state.accepted + verdict.num_kept,
      drafted=state.drafted + num_tested,
      keys=keys[:, 0])


def _advance(params, old: _LoopState, step) -> _LoopState:
  """One loop iteration: `step` for every row, finished rows carried through unchanged.

  The cache is not part of that: a finished row writes nothing to it (`cache.content_rows`) and it
  is never read again, so it is not copied every iteration.
  """
  active = old.active  # [B]
  new = step(params, old)

  def keep_finished(old_leaf, new_leaf):
    mask = active.reshape(active.shape + (1,) * (new_leaf.ndim - 1))
    return jnp.where(mask, new_leaf, old_leaf)

  merged = jax.tree_util.tree_map(keep_finished, old.replace(cache=None), new.replace(cache=None))
  return merged.replace(cache=new.cache)


def _loop(params, state: _LoopState, step) -> _LoopState:
  """Runs `step` until every row is done (`_advance`)."""
  return jax.lax.while_loop(lambda s: jnp.any(s.active),
                            lambda s: _advance(params, s, step), state)


@flax.struct.dataclass
class Batch:
  """A validated batch of problems (`Sampler.batch`): the sampler's traced inputs."""
  tokens: jax.Array      # int32 [B, N]: prompt values (others are ignored)
  ranks: jax.Array       # int32 [B, N]: one permutation per row
  num_prompt: jax.Array  # int32 [B]
  num_valid: jax.Array   # int32 [B]: ranks >= num_valid are padding
  keys: jax.Array        # PRNG key [B]: one stream per row
  # The longest prompt rounded up (`_prefill_rows`): the first cached forward's content rows.
  prefill_rows: int = flax.struct.field(pytree_node=False, default=0)


def _empty_cache(params, sampler: Sampler, rows: int, length: int) -> KVCache:
  """An empty cache of `rows` rows for `sampler`'s forwards (`ASARM.init_cache`)."""
  return ASARM(sampler.cfg).apply({"params": params}, rows, length, method=ASARM.init_cache,
                                  query_rows=sampler.query_rows)


def _initial_state(params, sampler: Sampler, batch: Batch,
                   cache: KVCache | None = None) -> _LoopState:
  """The loop state before the first forward: only the prompt decided, an empty cache (`cache`,
  when given: an empty one of B rows)."""
  cfg, draft_len = sampler.cfg, sampler.draft_len
  rows, length = batch.tokens.shape
  is_prompt = batch.ranks < batch.num_prompt[:, None]  # [B, N]
  zeros = jnp.zeros((rows,), jnp.int32)
  if cache is None and sampler.use_cache:
    cache = _empty_cache(params, sampler, rows, length)
  return _LoopState(
      tokens=jnp.where(is_prompt, batch.tokens, cfg.mask_token_id),
      ranks=batch.ranks,
      by_rank=masks_lib.positions_by_rank(batch.ranks),
      num_prompt=batch.num_prompt,
      num_valid=batch.num_valid,
      num_decided=batch.num_prompt,
      cache=cache,
      num_cached=zeros,
      draft_tokens=jnp.zeros((rows, draft_len), jnp.int32),
      draft_probs=jnp.zeros((rows, draft_len, cfg.vocab_size), jnp.float32),
      first_exact=jnp.zeros((rows,), bool),
      draft_len=jnp.full((rows,), draft_len, jnp.int32),
      stats=speculation.AcceptanceStats.initial(rows),
      nfe=zeros, rounds=zeros, accepted=zeros, drafted=zeros,
      keys=batch.keys)


@functools.partial(jax.jit, static_argnames=("sampler", "num_slots"))
def _run(params, batch: Batch, *, sampler: Sampler, num_slots: int | None = None
         ) -> SampleOutput:
  """The jitted sampler: one program per (sampler, shapes, prefill_rows, num_slots), traced with
  the sampler's backend choices."""
  with backend.use(sampler.choices):
    if num_slots is None:
      return _traced_run(params, batch, sampler)
    return _traced_stream(params, batch, sampler, num_slots)


def _method_step(sampler: Sampler, rows: int):
  """(the loop step of `sampler`, bound to it; the steady-state content rows of its cached
  forwards for a batch of `rows`: module docstring)."""
  step, num_content = {
      "sequential": (_sequential_step, 1),
      "assd": (_assd_round, 1),
      "assd_fused": (_fused_round, sampler.draft_len + 1),
      "ngram": (_ngram_round, sampler.draft_len + 1),
  }[sampler.method if sampler.drafter == "model" else sampler.drafter]
  if rows == 1:
    num_content = max(num_content, _MIN_CONTENT_ROWS_OF_ONE)
  return functools.partial(step, sampler=sampler), num_content


def _started(params, sampler: Sampler, batch: Batch, cache: KVCache | None = None) -> _LoopState:
  """The state after the first forward, which also computes the prompt's content rows (fused
  ASSD's first proposals; with a cache, every other method's first step)."""
  state = _initial_state(params, sampler, batch, cache)
  step, num_content = _method_step(sampler, batch.tokens.shape[0])
  if sampler.method == "assd_fused":
    return _fused_start(params, state, sampler=sampler, num_content=batch.prefill_rows)
  if sampler.use_cache:
    # The first step is every row's and its forward also computes the prompt's content rows (and
    # an n-gram round's drafts).
    first_rows = batch.prefill_rows + (num_content - 1 if sampler.drafter == "ngram" else 0)
    return step(params, state, num_content=min(first_rows, batch.tokens.shape[1]))
  return state


def _result(state: _LoopState, batch: Batch) -> SampleOutput:
  """The rows' output: the decided tokens, padding positions as given."""
  padding = batch.ranks >= batch.num_valid[:, None]  # [B, N]
  return SampleOutput(tokens=jnp.where(padding, batch.tokens, state.tokens), nfe=state.nfe,
                      rounds=state.rounds, accepted=state.accepted, drafted=state.drafted,
                      ranks=state.ranks)


def _traced_run(params, batch: Batch, sampler: Sampler) -> SampleOutput:
  """The body of `_run` for one batch."""
  step, num_content = _method_step(sampler, batch.tokens.shape[0])
  state = _loop(params, _started(params, sampler, batch),
                functools.partial(step, num_content=num_content))
  return _result(state, batch)


def _put_row(state: _LoopState, slot: jax.Array, started: _LoopState) -> _LoopState:
  """`state` [S] with row `slot` replaced by the batch of one `started` (its cache row too)."""
  put = lambda rows, row: jax.lax.dynamic_update_index_in_dim(rows, row[0], slot, 0)
  merged = jax.tree_util.tree_map(put, state.replace(cache=None), started.replace(cache=None))
  if state.cache is None:
    return merged
  cache = state.cache.replace(
      keys=tuple(map(put, state.cache.keys, started.cache.keys)),
      values=tuple(map(put, state.cache.values, started.cache.values)))
  return merged.replace(cache=cache)


def _traced_stream(params, batch: Batch, sampler: Sampler, num_slots: int) -> SampleOutput:
  """The body of `_run` with continuous batching: the B problems through `num_slots` slots
  (streaming.py); a problem is started alone, in an empty one-row cache that shares the slots'
  relative-position keys and LM-head layout, with the prefill rows its prompt needs."""
  step, num_content = _method_step(sampler, num_slots)
  step = functools.partial(step, num_content=num_content)
  slots_cache = one_row_cache = None
  if sampler.use_cache:
    slots_cache = _empty_cache(params, sampler, num_slots, batch.tokens.shape[1])
    one_row_cache = slots_cache.replace(
        keys=tuple(jnp.zeros_like(k[:1]) for k in slots_cache.keys),
        values=tuple(jnp.zeros_like(v[:1]) for v in slots_cache.values))

  # A problem started into a vacant slot computes as many prefill rows as its own prompt needs
  # (`_prefill_rows`: a power of two), not the longest prompt's of the whole stream.
  smallest = _MIN_PREFILL_ROWS.bit_length() - 1  # log2 of the fewest prefill rows
  sizes = sorted({batch.prefill_rows} | {
      min(1 << n, batch.prefill_rows) for n in range(smallest, batch.prefill_rows.bit_length())})

  def start_one(problem: Batch) -> _LoopState:
    starts = [functools.partial(_started, params, sampler, problem.replace(prefill_rows=size),
                                one_row_cache) for size in sizes]
    return jax.lax.switch(jnp.searchsorted(jnp.asarray(sizes), problem.num_prompt[0]), starts)

  results, idle = streaming.run(
      batch, batch.tokens.shape[0], num_slots,
      start=lambda first: _started(params, sampler, first, slots_cache), start_one=start_one,
      advance=lambda state: _advance(params, state, step), active=lambda state: state.active,
      put_row=_put_row, result=_result)
  return results.replace(idle_iterations=idle)


# ----------------------------------------------------------------------------------------------------
# The sampler object and its validation.


def _row_keys(rng, batch: int) -> jax.Array:
  """Typed keys [B]: `rng` split into one per row, or `rng` itself if it already holds B keys."""
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    # The raw key data of the default PRNG implementation: (2,) for threefry.
    key_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
    if (rng.dtype != jnp.uint32 or rng.ndim > len(key_shape) + 1
        or rng.shape[rng.ndim - len(key_shape):] != key_shape):
      raise ValueError(
          f"rng must be a PRNG key: a typed key (jax.random.key(seed)), raw uint32 key data of "
          f"shape {key_shape} (jax.random.PRNGKey(seed)), or one per row (B typed keys, or raw "
          f"key data of shape (B, {', '.join(map(str, key_shape))})); got an array of dtype "
          f"{rng.dtype} and shape {rng.shape}")
    rng = jax.random.wrap_key_data(rng)
  if rng.shape == ():
    return jax.random.split(rng, batch)
  if rng.shape == (batch,):
    return rng
  raise ValueError(f"rng must be one PRNG key or {batch} of them (one per row); got shape "
                   f"{rng.shape}")


def _per_row(value, batch: int, name: str) -> np.ndarray:
  array = np.asarray(value)
  if array.ndim == 0:
    array = np.full((batch,), array)
  if array.shape != (batch,) or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{name} must be an integer or {batch} integers; got {value!r}")
  return array.astype(np.int32)


_MIN_PREFILL_ROWS = 32
# Content rows of a cached forward for a batch of one row. With a single row (sequential steps,
# ASSD's draft forwards) XLA turns the cache write into a dynamic-update-slice, and its CPU
# backend (jax 0.10.2) then copies every layer's keys and values three times per iteration
# (benchmarks/profile_forward.py: 0.16 of 0.61 ms per step at the default size, 3.4 of 34 ms at
# the XLNet-base shape). A second content row (padding: computed, never written) keeps it a
# scatter, done in place: sequential decoding at batch 1, N = 512, 90% hidden, the trained
# default, 213 -> 166 ms (same tokens; interleaved runs, medians of 15).
_MIN_CONTENT_ROWS_OF_ONE = 2


def _prefill_rows(num_prompt: np.ndarray, length: int) -> int:
  """Content rows of the first cached forward: the longest prompt rounded up to a power of two, at
  least 32 and at most N, so that batches with similar prompt lengths share a compilation (32 rows
  cost little next to the N keys every row attends over)."""
  longest = max(int(num_prompt.max()), _MIN_PREFILL_ROWS)
  return min(1 << (longest - 1).bit_length(), length)


def _flag(name: str, value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False; got {value!r}")
  return bool(value)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """The static choices of an exact sampler, like the gemma sampler: frozen and hashable, so each
  Sampler compiles once per batch shape and every later call reuses the program.

  Build one with `Sampler.create` (which validates every option) and call it on a batch:

      sampler = Sampler.create(cfg, method="assd_fused", draft_len=5, temperature=0.8)
      out = sampler(params, tokens, ranks, num_prompt, jax.random.key(0))

  Attributes:
    cfg: the model's ModelConfig.
    method: one of METHODS.
    draft_len: K, drafts per round (1 for sequential decoding).
    sampling: the logit processing applied to every draft and target law alike.
    use_cache: the order-aware KV cache (the same law and NFE, much less compute per forward).
    adaptive: per-row draft lengths in [1, K] (speculative methods with K > 1 only).
    rules: the speculative rules; always `speculation.EXACT` outside the tests.
    choices: the backend's lowering choices (backend.py), fixed when the Sampler is built.
    drafter: one of DRAFTERS ("ngram" with method "assd" only).
    r_atol: LOSSY when > 0: a draft is kept when u < q/p + r_atol (fewer forwards, not the law
      of sequential decoding).
    draft_only_temperature: LOSSY: the temperature shapes the drafts only; the verify laws q are
      taken at temperature 1 (the paper code's "oracle without temperature").
    adaptive_order: NOT a fixed order's law: every round re-ranks the undecided positions by the
      model's entropy there, lowest first (module docstring; method "assd", model drafts).
  """
  cfg: ModelConfig
  method: str
  draft_len: int
  sampling: processors.SamplingConfig
  use_cache: bool
  adaptive: bool
  rules: speculation.Rules = speculation.EXACT
  choices: backend.Choices = dataclasses.field(default_factory=backend.current)
  drafter: str = "model"
  r_atol: float = 0.0
  draft_only_temperature: bool = False
  adaptive_order: bool = False

  @property
  def lossy(self) -> bool:
    """True when an option makes the output law differ from sequential decoding's."""
    return is_lossy(self.r_atol, self.draft_only_temperature)

  @property
  def target_sampling(self) -> processors.SamplingConfig:
    """The processing of the verify laws q: `sampling`, at temperature 1 with the lossy
    draft-only temperature."""
    if self.draft_only_temperature:
      return dataclasses.replace(self.sampling, temperature=1.0)
    return self.sampling

  @property
  def name(self) -> str:
    """The sampler's label in results: the method, its drafter if not the model, the adaptive
    order, and "lossy"."""
    label = self.method if self.drafter == "model" else f"{self.method}_{self.drafter}"
    label += "_adaptive_order" if self.adaptive_order else ""
    return f"{label} (lossy)" if self.lossy else label

  @property
  def query_rows(self) -> int:
    """Query rows per batch row of a steady-state forward: 1, K (ASSD) or 2K (fused); N for the
    adaptive order's draft forwards."""
    if self.adaptive_order:
      return self.cfg.max_len
    return {"sequential": 1, "assd": self.draft_len, "assd_fused": 2 * self.draft_len}[self.method]

  @classmethod
  def create(cls, cfg: ModelConfig, *, method: str = DEFAULT_METHOD,
             draft_len: int = DEFAULT_DRAFT_LEN, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, banned_ids: Sequence[int] = (), use_cache: bool = True,
             adaptive: bool = False, batch_shape: tuple[int, int] | None = None,
             rules: speculation.Rules = speculation.EXACT, drafter: str = "model",
             r_atol: float = 0.0, draft_only_temperature: bool = False,
             adaptive_order: bool = False) -> Sampler:
    """A validated Sampler.

    Args:
      cfg: the model's ModelConfig.
      method: "assd" (speculative; `draft_len` drafts per round, 2 forwards per round),
        "assd_fused" (speculative, 1 forward per round that verifies and proposes),
        "sequential" (one token per NFE), or "auto": `fastest_method(B)` of `batch_shape` (fused
        ASSD when `adaptive`). All are exact: they differ in speed only.
      draft_len: k, drafts per round (>= 1; k == 1 is sequential decoding); with `adaptive`, the
        largest k.
      temperature: >= 0; 0 is greedy (argmax) decoding.
      top_k: keep the k most likely tokens (0 = off, at most V).
      top_p: nucleus mass in (0, 1] (1 = off).
      banned_ids: ids never sampled besides the mask token (which is always banned).
      use_cache: keep the decided tokens' content keys/values (the order-aware cache).
      adaptive: choose each row's draft length per round in [1, draft_len] from its acceptance
        history (speculative methods only; exact, but it saves no compute with static shapes,
        see speculation.py).
      batch_shape: (B, N) of the batches the sampler will be called on (only "auto" uses it, and
        only B; default one row).
      rules: leave at `speculation.EXACT` (the tests pass wrong rules here).
      drafter: "model" (the model's own draft forward) or "ngram" (bigram counts of the row's
        decided tokens, ngram.py: one forward per round; exact; method "assd" or "auto").
      r_atol: LOSSY, default 0 (off): keep a draft when u < q/p + r_atol. Fewer forwards, and the
        samples no longer follow the sequential law (speculative methods only).
      draft_only_temperature: LOSSY, default off: `temperature` applies to the drafts only and the
        verify laws use temperature 1 (model drafts only).
      adaptive_order: default off. Every round decodes the undecided positions where the model is
        most certain first (lowest entropy); the output law is NOT that of the given order or of
        any fixed order (see the module docstring). Method "assd" (or "auto") with model drafts;
        `ranks` then fixes only the prompt and the padding, and `SampleOutput.ranks` reports the
        order used.

    Raises:
      ValueError: naming the bad option.
    """
    if drafter not in DRAFTERS:
      raise ValueError(f"drafter must be one of {DRAFTERS}; got {drafter!r}")
    adaptive_order = _flag("adaptive_order", adaptive_order)
    if method == AUTO:
      method = ("assd" if drafter == "ngram" or adaptive_order else "assd_fused" if adaptive is True
                else fastest_method((batch_shape or (1,))[0]))
    if method not in METHODS:
      raise ValueError(f"method must be one of {(*METHODS, AUTO)}; got {method!r}")
    if drafter == "ngram" and method != "assd":
      raise ValueError(f"drafter 'ngram' needs method 'assd' (or 'auto'); got {method!r}")
    if adaptive_order and (method != "assd" or drafter != "model"):
      raise ValueError("adaptive_order needs method 'assd' (or 'auto') with drafter 'model'; got "
                       f"method {method!r}, drafter {drafter!r}")
    if (isinstance(r_atol, bool) or not isinstance(r_atol, (int, float, np.number))
        or not 0 <= r_atol < float("inf")):
      raise ValueError(f"r_atol must be a number >= 0 (0 = off; > 0 is lossy); got {r_atol!r}")
    draft_only_temperature = _flag("draft_only_temperature", draft_only_temperature)
    if (r_atol > 0 or draft_only_temperature) and method == "sequential":
      raise ValueError("r_atol and draft_only_temperature are options of the speculative methods "
                       "'assd' and 'assd_fused'; sequential decoding has no drafts")
    if draft_only_temperature and drafter == "ngram":
      raise ValueError("draft_only_temperature needs drafter 'model' (n-gram drafts have no "
                       "temperature)")
    if (isinstance(draft_len, bool) or not isinstance(draft_len, (int, np.integer))
        or draft_len < 1):
      raise ValueError(f"draft_len must be an integer >= 1; got {draft_len!r}")
    use_cache, adaptive = _flag("use_cache", use_cache), _flag("adaptive", adaptive)
    if adaptive and method == "sequential":
      raise ValueError("adaptive=True needs method 'assd' or 'assd_fused' (sequential decoding "
                       "has no drafts)")
    sampling = processors.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                                         banned_ids=(cfg.mask_token_id, *banned_ids))
    sampling.validate(cfg.vocab_size)
    speculative = method != "sequential"
    return cls(cfg=cfg, method=method, draft_len=int(draft_len) if speculative else 1,
               sampling=sampling, use_cache=use_cache,
               adaptive=adaptive and speculative and draft_len > 1, rules=rules, drafter=drafter,
               r_atol=float(r_atol), draft_only_temperature=draft_only_temperature,
               adaptive_order=adaptive_order)

  def batch(self, tokens, ranks, num_prompt, rng, num_valid=None) -> Batch:
    """Validates a batch of problems on the host (see `__call__` for the arguments).

    Raises:
      ValueError: naming the bad argument, before anything is compiled.
    """
    cfg = self.cfg
    tokens_np = np.asarray(tokens)
    if tokens_np.ndim != 2 or not np.issubdtype(tokens_np.dtype, np.integer):
      raise ValueError(f"tokens must be integers of shape [batch, length]; got dtype "
                       f"{tokens_np.dtype} and shape {tokens_np.shape}")
    if np.shape(ranks) != tokens_np.shape:
      raise ValueError(f"tokens and ranks must have the same shape; got {tokens_np.shape} and "
                       f"{np.shape(ranks)}")
    rows, length = tokens_np.shape
    if rows == 0 or length == 0:
      raise ValueError(f"tokens must be non-empty; got shape {tokens_np.shape}")
    if length > cfg.max_len:
      raise ValueError(f"sequence length {length} exceeds the model's max_len {cfg.max_len}")
    ranks_np, prompt_np = masks_lib.validate_order(ranks, num_prompt, seq_len=length,
                                                   allow_full_prompt=False)
    valid_np = _per_row(length if num_valid is None else num_valid, rows, "num_valid")
    bad = (valid_np <= prompt_np) | (valid_np > length)
    if bad.any():
      row = int(np.argmax(bad))
      raise ValueError(f"row {row}: need num_prompt < num_valid <= length ({length}); got "
                       f"num_prompt {prompt_np[row]} and num_valid {valid_np[row]}: nothing to "
                       "generate" if valid_np[row] <= prompt_np[row] else
                       f"row {row}: num_valid {valid_np[row]} exceeds the length {length}")
    prompt_tokens = tokens_np[ranks_np < prompt_np[:, None]]
    if prompt_tokens.size and (prompt_tokens.min() < 0 or prompt_tokens.max() >= cfg.vocab_size):
      raise ValueError(f"prompt tokens must lie in [0, {cfg.vocab_size}); got values in "
                       f"[{prompt_tokens.min()}, {prompt_tokens.max()}]")
    return Batch(tokens=jnp.asarray(tokens_np, jnp.int32), ranks=jnp.asarray(ranks_np),
                 num_prompt=jnp.asarray(prompt_np), num_valid=jnp.asarray(valid_np),
                 keys=_row_keys(rng, rows),
                 prefill_rows=_prefill_rows(prompt_np, length) if self.use_cache else 0)

  def __call__(self, params, tokens, ranks, num_prompt, rng, *, num_valid=None,
               num_slots: int | None = None) -> SampleOutput:
    """Fills every non-prompt position of a batch, in rank order, exactly.

    Args:
      params: the ASARM parameters.
      tokens: int [B, N]; values at positions of rank >= num_prompt are ignored.
      ranks: int [B, N], a permutation of 0..N-1 per row (see masks.py).
      num_prompt: int or int [B]: ranks below it are the prompt (at least one rank must be left).
      rng: a PRNG key, split into one stream per row, or B keys (row b uses key b, so a batch-1
        call with `keys[b:b + 1]` reproduces row b).
      num_valid: int or int [B], default N: ranks >= num_valid are padding. They are never
        generated, no other position sees them, and they come back as given. They must rank last.
      num_slots: continuous batching: run the B rows as a stream of problems through this many
        slots, each finished slot taking the next problem (streaming.py), instead of one batch
        that loops until its slowest row is done. None (or >= B): one batch. The output is the
        same either way (each row samples with its own key); only the idle work differs
        (`SampleOutput.idle_fraction`).

    Returns:
      SampleOutput (see its fields; the NFE accounting is in the module docstring).
    """
    batch = self.batch(tokens, ranks, num_prompt, rng, num_valid)
    return _run(params, batch, sampler=self, num_slots=_slots(num_slots, batch.tokens.shape[0]))

  def compile(self, params, batch: Batch, num_slots: int | None = None):
    """The compiled program for `batch`'s shapes: call it as `compiled(params, batch)`."""
    slots = _slots(num_slots, batch.tokens.shape[0])
    return _run.lower(params, batch, sampler=self, num_slots=slots).compile()

  def timed(self, params, tokens, ranks, num_prompt, rng, *, num_valid=None, repeats: int = 1,
            num_slots: int | None = None) -> tuple[SampleOutput, float, float]:
    """`__call__`, compiled first: returns (output, compile seconds, run seconds).

    With `repeats` > 1 the compiled program runs that many times on the same inputs (the same
    output each time) and the run seconds are their median: a single run right after compiling
    can carry one-time costs (buffer allocation, thread start-up) that are not the sampler's.
    Compilations are cached, so only the first call with a given shape pays for one.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
      raise ValueError(f"repeats must be an integer >= 1; got {repeats!r}")
    batch = self.batch(tokens, ranks, num_prompt, rng, num_valid)
    start = time.perf_counter()
    compiled = self.compile(params, batch, num_slots)
    compile_seconds = time.perf_counter() - start
    run_seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      out = jax.block_until_ready(compiled(params, batch))
      run_seconds.append(time.perf_counter() - start)
    return out, compile_seconds, float(np.median(run_seconds))


def _slots(num_slots, rows: int) -> int | None:
  """The static slot count of `_run` for a batch of `rows` rows: None for one batch (`num_slots`
  None or >= rows).

  Raises:
    ValueError: `num_slots` is not None or an integer >= 1.
  """
  if num_slots is None:
    return None
  if isinstance(num_slots, bool) or not isinstance(num_slots, (int, np.integer)) or num_slots < 1:
    raise ValueError(f"num_slots must be None (one batch) or an integer >= 1; got {num_slots!r}")
  return int(num_slots) if num_slots < rows else None


def _batch_shape(tokens) -> tuple[int, int] | None:
  """(B, N) of tokens [B, N]; None for anything else (`Sampler.batch` rejects it)."""
  return tuple(int(d) for d in np.shape(tokens)) if np.ndim(tokens) == 2 else None


def _rows_at_once(tokens, num_slots) -> tuple[int, int] | None:
  """(rows sampled together, N): the slots of a stream, else the batch (what "auto" sizes for)."""
  shape = _batch_shape(tokens)
  if shape is None:
    return None
  return (_slots(num_slots, shape[0]) or shape[0], shape[1])


def sample(params, cfg: ModelConfig, tokens, ranks, num_prompt, rng, *, num_valid=None,
           num_slots: int | None = None, **options) -> SampleOutput:
  """`Sampler.create(cfg, **options)(params, tokens, ranks, num_prompt, rng, num_valid=...,
  num_slots=...)`.

  Options (see `Sampler.create`): method, draft_len, temperature, top_k, top_p, banned_ids,
  use_cache, adaptive, drafter and the lossy r_atol and draft_only_temperature; "auto" resolves
  with the rows sampled at once (B, or `num_slots`). Raises ValueError naming a bad argument
  before anything is compiled.
  """
  sampler = Sampler.create(cfg, batch_shape=_rows_at_once(tokens, num_slots), **options)
  return sampler(params, tokens, ranks, num_prompt, rng, num_valid=num_valid, num_slots=num_slots)


def timed_sample(params, cfg: ModelConfig, tokens, ranks, num_prompt, rng, *, num_valid=None,
                 repeats: int = 1, num_slots: int | None = None, **options
                 ) -> tuple[SampleOutput, float, float]:
  """`sample`, compiled first: returns (output, compile seconds, median run seconds of `repeats`
  runs; see `Sampler.timed`)."""
  sampler = Sampler.create(cfg, batch_shape=_rows_at_once(tokens, num_slots), **options)
  return sampler.timed(params, tokens, ranks, num_prompt, rng, num_valid=num_valid,
                       repeats=repeats, num_slots=num_slots)

"""Exact samplers for AS-ARMs: sequential any-order decoding and ASSD, as one jitted while_loop.

Both samplers draw from the same law: the product, in rank order, of the model's conditionals
q(x_{rank n} | ranks < n), each passed through the same logit processing (`processors.probabilities`).

Sequential: one forward per generated token. The query row at the position of rank n, under the
density masks, sees exactly the positions of rank < n, so the tokens at undecided positions never
matter.

ASSD (Any-Subset Speculative Decoding, arXiv 2504.20456), one round for a row with n decided ranks and
m = min(k, num_valid - n) ranks left to draft:
  1. draft forward (`masks.draft_masks`): the query rows at ranks n..n+m-1 each see exactly the decided
     positions; p_j is their processed law. Draw every x_j ~ p_j independently.
  2. verify forward (`masks.density_masks`) with the drafts written in: q_j is the processed law of
     rank n+j given ranks < n+j, i.e. given the decided tokens and x_0..x_{j-1}.
  3. in rank order, keep x_j with probability min(1, q_j(x_j) / p_j(x_j)); at the first rejection draw
     the token of that rank from normalize(max(q_j - p_j, 0)) and end the round. No bonus token.
Rank n's draft is always kept: its draft row sees exactly ranks < n, so p_0 *is* the model's conditional
at rank n (the same as q_0 in exact arithmetic). Keeping it outright, instead of testing it against the
verify pass's q_0, makes the rule exact in floating point as well (a test of q_0 against p_0 could
reject on rounding noise and then resample from a residual made only of noise). When m == 1 the verify
forward is therefore useless and is skipped (this is the paper's "last token with the draft pass
alone").

NFE accounting (forward passes a row needs; a batched forward counts once for every row it serves):
  a round with m >= 2 drafts costs 2 NFE and decides at least 2 tokens (x_0 is kept; then either x_1 is
  kept, or x_1 is rejected and rank n+1 is resampled); a round with m == 1 costs 1 NFE and decides 1.
Hence, deterministically for every row, NFE <= the number of tokens it generates (the paper's bound:
at most N - num_prompt forwards), rounds <= NFE <= 2 * rounds, and for k == 1 ASSD is sequential
decoding (1 NFE per token). `accepted` counts kept drafts, x_0 included, so
tokens generated = accepted + (rounds that ended in a rejection).

Batches are ragged: every row has its own prompt length, `num_valid` and progress; the loop runs while
any row is unfinished, and a finished row's state is carried through unchanged (bitwise). Each row owns
a PRNG stream (split from `rng`), consumed only while the row is active, so a row's result does not
depend on the other rows of its batch. Every iteration splits a row's key into (next, draft, accept,
resample) in both samplers, so ASSD with k == 1 reproduces sequential decoding token for token.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import masks as masks_lib
from asarm_jax import processors
from asarm_jax.model import ASARM, ModelConfig

METHODS = ("assd", "sequential")
# Private test hooks: deliberately wrong acceptance rules, used to show that the exactness tests can
# fail. Never use them for sampling.
_VARIANTS = ("exact", "accept_all", "resample_from_q")


@flax.struct.dataclass
class SampleOutput:
  """What `sample` returns."""
  tokens: jax.Array    # int32 [B, N]: prompt kept, ranks in [num_prompt, num_valid) generated
  nfe: jax.Array       # int32 [B]: forward passes the row needed
  rounds: jax.Array    # int32 [B]: loop iterations the row was active (== nfe for sequential)
  accepted: jax.Array  # int32 [B]: ASSD drafts kept, each round's first included (0 for sequential)


@flax.struct.dataclass
class _LoopState:
  """The while_loop carry. Every field keeps its shape; K = draft_len (1 for sequential)."""
  tokens: jax.Array        # int32 [B, N]: decided tokens; mask id at undecided positions
  ranks: jax.Array         # int32 [B, N]: the order (constant)
  by_rank: jax.Array       # int32 [B, N]: position of each rank (constant)
  num_prompt: jax.Array    # int32 [B] (constant)
  num_valid: jax.Array     # int32 [B]: ranks >= num_valid are padding, never generated (constant)
  num_decided: jax.Array   # int32 [B]: ranks < num_decided are decided
  draft_tokens: jax.Array  # int32 [B, K]: the row's latest drafts (latest samples for sequential)
  draft_probs: jax.Array   # float32 [B, K, V]: the processed laws they were drawn from
  nfe: jax.Array           # int32 [B]
  rounds: jax.Array        # int32 [B]
  accepted: jax.Array      # int32 [B]
  keys: jax.Array          # PRNG key [B]: one stream per row


# ----------------------------------------------------------------------------------------------------
# Forward passes. Each pass is one small function so that a cached version (`ASARM.extend`) can
# replace it without touching the loop bodies.


def _forward(params, cfg: ModelConfig, tokens, content_mask, query_mask, query_positions):
  """Query-stream logits float32 [B, Q, V] at `query_positions` [B, Q]."""
  return ASARM(cfg).apply({"params": params}, tokens, content_mask, query_mask, query_positions,
                          method=ASARM.forward)


def _density_logits(params, cfg: ModelConfig, state: _LoopState, tokens, query_positions):
  """Logits [B, Q, V]; the query row of rank r sees exactly the positions of rank < r."""
  content_mask, query_mask = masks_lib.density_masks(state.ranks, state.num_prompt)
  return _forward(params, cfg, tokens, content_mask, query_mask, query_positions)


def _draft_logits(params, cfg: ModelConfig, state: _LoopState, query_positions):
  """Logits [B, Q, V]; every undecided query row sees exactly the decided positions."""
  content_mask, query_mask = masks_lib.draft_masks(state.ranks, state.num_decided,
                                                   state.num_prompt)
  return _forward(params, cfg, state.tokens, content_mask, query_mask, query_positions)


# ----------------------------------------------------------------------------------------------------
# Loop bodies. Each returns the next state for every row; `_loop` keeps finished rows unchanged.


def _split_rows(keys: jax.Array, num: int) -> jax.Array:
  """Splits each row's key: [B] -> [B, num]."""
  return jax.vmap(lambda key: jax.random.split(key, num))(keys)


def _sample_rows(keys: jax.Array, probs: jax.Array) -> jax.Array:
  """One token per law, each row with its own key: keys [B], probs [B, K, V] -> int32 [B, K]."""
  return jax.vmap(processors.sample_from)(keys, probs)


def _pick(values: jax.Array, index: jax.Array) -> jax.Array:
  """values[b, index[b, j]] along axis 1: values [B, K, ...], index [B, J] -> [B, J, ...]."""
  index = index.reshape(index.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, index, axis=1)


def _sequential_step(params, state: _LoopState, *, cfg: ModelConfig,
                     sampling: processors.SamplingConfig) -> _LoopState:
  """Decides the token of rank num_decided: one forward."""
  batch, length = state.tokens.shape
  rows = jnp.arange(batch)[:, None]  # [B, 1]
  rank = jnp.minimum(state.num_decided, length - 1)[:, None]  # [B, 1]
  position = _pick(state.by_rank, rank)  # [B, 1]
  probs = processors.probabilities(
      _density_logits(params, cfg, state, state.tokens, position), sampling)  # [B, 1, V]
  keys = _split_rows(state.keys, 4)  # [B, 4]: the same schedule as an ASSD round
  token = _sample_rows(keys[:, 1], probs)  # [B, 1]
  return state.replace(
      tokens=state.tokens.at[rows, position].set(token),
      num_decided=state.num_decided + 1,
      draft_tokens=token,
      draft_probs=probs,
      nfe=state.nfe + 1,
      rounds=state.rounds + 1,
      keys=keys[:, 0])


def _assd_round(params, state: _LoopState, *, cfg: ModelConfig,
                sampling: processors.SamplingConfig, draft_len: int,
                variant: str) -> _LoopState:
  """One ASSD round: draft forward, verify forward (skipped when m == 1), acceptance."""
  batch, length = state.tokens.shape
  rows = jnp.arange(batch)[:, None]  # [B, 1]
  slots = jnp.arange(draft_len)[None, :]  # [1, K]
  num_drafts = jnp.clip(state.num_valid - state.num_decided, 0, draft_len)  # [B] (m)
  in_round = slots < num_drafts[:, None]  # [B, K]: slots past m are computed but ignored
  target = jnp.minimum(state.num_decided[:, None] + slots, length - 1)  # [B, K] ranks
  positions = _pick(state.by_rank, target)  # [B, K]
  keys = _split_rows(state.keys, 4)  # [B, 4]: next, draft, accept, resample

  # 1. Draft: x_j ~ p_j for every slot, in parallel.
  p = processors.probabilities(_draft_logits(params, cfg, state, positions), sampling)  # [B, K, V]
  drafts = _sample_rows(keys[:, 1], p)  # [B, K]
  drafted = state.tokens.at[rows, jnp.where(in_round, positions, length)].set(
      drafts, mode="drop")  # [B, N]
  p_x = jnp.take_along_axis(p, drafts[:, :, None], axis=-1)[..., 0]  # [B, K]

  if draft_len == 1:
    kept = in_round  # [B, 1]: x_0 is exact; there is nothing to verify
    q = p
  else:
    # 2. Verify: q_j given the decided tokens and x_0..x_{j-1}. Skipped when no row drafts 2+.
    def verify():
      return processors.probabilities(
          _density_logits(params, cfg, state, drafted, positions), sampling)  # [B, K, V]

    active = state.num_decided < state.num_valid  # [B]
    q = jax.lax.cond(jnp.any(active & (num_drafts > 1)), verify, lambda: p)
    q_x = jnp.take_along_axis(q, drafts[:, :, None], axis=-1)[..., 0]  # [B, K]
    # 3. Accept x_j iff u_j < q_j(x_j) / p_j(x_j) (u in [0, 1), p_j(x_j) > 0 as x_j ~ p_j). The first
    # slot is kept outright (see the module docstring).
    u = jax.vmap(lambda key: jax.random.uniform(key, (draft_len,)))(keys[:, 2])  # [B, K]
    ok = u < q_x / jnp.where(p_x > 0, p_x, 1.0)  # [B, K]
    if variant == "accept_all":
      ok = jnp.ones_like(ok)
    ok = ok.at[:, 0].set(True) & in_round
    kept = jnp.cumprod(ok, axis=1).astype(bool)  # [B, K]: the leading run of kept drafts
  num_kept = jnp.sum(kept, axis=1, dtype=jnp.int32)  # [B] (a, in [1, m] for active rows)
  rejected = num_kept < num_drafts  # [B]

  # The first rejected slot a draws from normalize(max(q_a - p_a, 0)). Where q_a <= p_a everywhere in
  # floating point (possible only through rounding) it falls back to q_a.
  first_out = jnp.minimum(num_kept, draft_len - 1)[:, None]  # [B, 1]
  q_a = _pick(q, first_out)  # [B, 1, V]
  residual = jnp.maximum(q_a - _pick(p, first_out), 0.0)  # [B, 1, V]
  mass = jnp.sum(residual, axis=-1, keepdims=True)  # [B, 1, 1]
  residual = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), q_a)
  if variant == "resample_from_q":
    residual = q_a
  fix = _sample_rows(keys[:, 3], residual)  # [B, 1]

  tokens = state.tokens.at[rows, jnp.where(kept, positions, length)].set(drafts, mode="drop")
  fix_position = jnp.where(rejected[:, None], _pick(positions, first_out), length)  # [B, 1]
  tokens = tokens.at[rows, fix_position].set(fix, mode="drop")
  return state.replace(
      tokens=tokens,
      num_decided=state.num_decided + num_kept + rejected.astype(jnp.int32),
      draft_tokens=drafts,
      draft_probs=p,
      nfe=state.nfe + jnp.where(num_drafts > 1, 2, 1),
      rounds=state.rounds + 1,
      accepted=state.accepted + num_kept,
      keys=keys[:, 0])


def _loop(params, state: _LoopState, step) -> _LoopState:
  """Runs `step` until every row is done, carrying finished rows through unchanged."""

  def body(old: _LoopState) -> _LoopState:
    active = old.num_decided < old.num_valid  # [B]
    new = step(params, old)

    def keep_finished(old_leaf, new_leaf):
      mask = active.reshape(active.shape + (1,) * (new_leaf.ndim - 1))
      return jnp.where(mask, new_leaf, old_leaf)

    return jax.tree_util.tree_map(keep_finished, old, new)

  return jax.lax.while_loop(lambda s: jnp.any(s.num_decided < s.num_valid), body, state)


@functools.partial(jax.jit,
                   static_argnames=("cfg", "method", "draft_len", "sampling", "variant"))
def _sample_jit(params, tokens, ranks, num_prompt, num_valid, keys, *, cfg: ModelConfig,
                method: str, draft_len: int, sampling: processors.SamplingConfig,
                variant: str) -> SampleOutput:
  """The jitted sampler; arguments are validated by `_prepare`. Shapes: tokens/ranks [B, N]."""
  batch, _ = tokens.shape
  is_prompt = ranks < num_prompt[:, None]  # [B, N]
  state = _LoopState(
      tokens=jnp.where(is_prompt, tokens, cfg.mask_token_id),
      ranks=ranks,
      by_rank=masks_lib.positions_by_rank(ranks),
      num_prompt=num_prompt,
      num_valid=num_valid,
      num_decided=num_prompt,
      draft_tokens=jnp.zeros((batch, draft_len), jnp.int32),
      draft_probs=jnp.zeros((batch, draft_len, cfg.vocab_size), jnp.float32),
      nfe=jnp.zeros((batch,), jnp.int32),
      rounds=jnp.zeros((batch,), jnp.int32),
      accepted=jnp.zeros((batch,), jnp.int32),
      keys=keys)
  if method == "sequential":
    step = functools.partial(_sequential_step, cfg=cfg, sampling=sampling)
  else:
    step = functools.partial(_assd_round, cfg=cfg, sampling=sampling, draft_len=draft_len,
                             variant=variant)
  state = _loop(params, state, step)
  padding = ranks >= num_valid[:, None]  # [B, N]
  return SampleOutput(tokens=jnp.where(padding, tokens, state.tokens), nfe=state.nfe,
                      rounds=state.rounds, accepted=state.accepted)


# ----------------------------------------------------------------------------------------------------
# Validation and the public entry points.


def _row_keys(rng, batch: int) -> jax.Array:
  """Typed keys [B]: `rng` split into one per row, or `rng` itself if it already holds B keys."""
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    if rng.dtype != jnp.uint32 or rng.ndim not in (1, 2):
      raise ValueError("rng must be a PRNG key (jax.random.key / PRNGKey) or B of them; got "
                       f"an array of dtype {rng.dtype} and shape {rng.shape}")
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


def _prepare(params, cfg: ModelConfig, tokens, ranks, num_prompt, rng, *, method: str = "assd",
             draft_len: int = 5, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             banned_ids: Sequence[int] = (), num_valid=None, _variant: str = "exact"):
  """Validates everything on the host; returns (args, static kwargs) for `_sample_jit`."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")
  if _variant not in _VARIANTS:
    raise ValueError(f"unknown variant {_variant!r}")
  if isinstance(draft_len, bool) or not isinstance(draft_len, (int, np.integer)) or draft_len < 1:
    raise ValueError(f"draft_len must be an integer >= 1; got {draft_len!r}")
  for name, value in (("temperature", temperature), ("top_p", top_p)):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      raise ValueError(f"{name} must be a number; got {value!r}")
  sampling = processors.SamplingConfig(
      temperature=float(temperature), top_k=top_k, top_p=float(top_p),
      banned_ids=(cfg.mask_token_id, *banned_ids))
  sampling.validate(cfg.vocab_size)

  tokens_np = np.asarray(tokens)
  if tokens_np.ndim != 2 or not np.issubdtype(tokens_np.dtype, np.integer):
    raise ValueError(f"tokens must be integers of shape [batch, length]; got dtype "
                     f"{tokens_np.dtype} and shape {tokens_np.shape}")
  if np.shape(ranks) != tokens_np.shape:
    raise ValueError(f"tokens and ranks must have the same shape; got {tokens_np.shape} and "
                     f"{np.shape(ranks)}")
  batch, length = tokens_np.shape
  if batch == 0 or length == 0:
    raise ValueError(f"tokens must be non-empty; got shape {tokens_np.shape}")
  if length > cfg.max_len:
    raise ValueError(f"sequence length {length} exceeds the model's max_len {cfg.max_len}")
  ranks_np, prompt_np = masks_lib.validate_order(ranks, num_prompt, seq_len=length,
                                                 allow_full_prompt=False)
  valid_np = _per_row(length if num_valid is None else num_valid, batch, "num_valid")
  bad = (valid_np <= prompt_np) | (valid_np > length)
  if bad.any():
    row = int(np.argmax(bad))
    raise ValueError(f"row {row}: need num_prompt < num_valid <= length ({length}); got num_prompt "
                     f"{prompt_np[row]} and num_valid {valid_np[row]}: nothing to generate"
                     if valid_np[row] <= prompt_np[row] else
                     f"row {row}: num_valid {valid_np[row]} exceeds the length {length}")
  is_prompt = ranks_np < prompt_np[:, None]
  prompt_tokens = tokens_np[is_prompt]
  if prompt_tokens.size and (prompt_tokens.min() < 0 or prompt_tokens.max() >= cfg.vocab_size):
    raise ValueError(f"prompt tokens must lie in [0, {cfg.vocab_size}); got values in "
                     f"[{prompt_tokens.min()}, {prompt_tokens.max()}]")
  keys = _row_keys(rng, batch)
  args = (params, jnp.asarray(tokens_np, jnp.int32), jnp.asarray(ranks_np),
          jnp.asarray(prompt_np), jnp.asarray(valid_np), keys)
  static = dict(cfg=cfg, method=method, draft_len=int(draft_len) if method == "assd" else 1,
                sampling=sampling, variant=_variant)
  return args, static


def sample(params, cfg: ModelConfig, tokens, ranks, num_prompt, rng, *, method: str = "assd",
           draft_len: int = 5, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           banned_ids: Sequence[int] = (), num_valid=None, _variant: str = "exact"
           ) -> SampleOutput:
  """Fills every non-prompt position of a batch, in rank order, with an exact sampler.

  Args:
    params: the ASARM parameters.
    cfg: its ModelConfig.
    tokens: int [B, N]; values at positions of rank >= num_prompt are ignored.
    ranks: int [B, N], a permutation of 0..N-1 per row (see masks.py).
    num_prompt: int or int [B]: ranks below it are the prompt (at least one rank must be left).
    rng: a PRNG key, split into one stream per row, or B keys (row b uses key b, so a batch-1 call
      with `keys[b:b + 1]` reproduces row b).
    method: "assd" (speculative; `draft_len` drafts per round) or "sequential" (one token per NFE).
    draft_len: k, drafts per ASSD round (>= 1; k == 1 is sequential decoding with draft masks).
    temperature: >= 0; 0 is greedy (argmax) decoding.
    top_k: keep the k most likely tokens (0 = off, at most V).
    top_p: nucleus mass in (0, 1] (1 = off).
    banned_ids: ids never sampled besides the mask token (which is always banned).
    num_valid: int or int [B], default N: ranks >= num_valid are padding. They are never generated,
      no other position sees them, and they come back as given. They must rank last in the order.
    _variant: test hook (deliberately wrong rules); leave at "exact".

  Returns:
    SampleOutput (see its fields; the NFE accounting is in the module docstring).

  Raises:
    ValueError: naming the bad argument, before anything is compiled.
  """
  args, static = _prepare(params, cfg, tokens, ranks, num_prompt, rng, method=method,
                          draft_len=draft_len, temperature=temperature, top_k=top_k, top_p=top_p,
                          banned_ids=banned_ids, num_valid=num_valid, _variant=_variant)
  return _sample_jit(*args, **static)


def timed_sample(params, cfg: ModelConfig, tokens, ranks, num_prompt, rng, **kwargs
                 ) -> tuple[SampleOutput, float, float]:
  """`sample`, compiled first: returns (output, compile seconds, run seconds).

  Compilations are cached, so only the first call with a given shape and configuration pays for one.
  """
  args, static = _prepare(params, cfg, tokens, ranks, num_prompt, rng, **kwargs)
  start = time.perf_counter()
  compiled = _sample_jit.lower(*args, **static).compile()
  compiled_at = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, compiled_at - start, time.perf_counter() - compiled_at


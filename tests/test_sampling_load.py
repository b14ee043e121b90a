"""Many sampling calls within the compiled shapes neither recompile nor grow memory.

What is static in `sampling.sample` (a new value compiles a new sampler): the shapes [B, N], the
model config, method, draft_len, the SamplingConfig (temperature, top_k, top_p, banned ids),
use_cache, adaptive, and the prefill bucket (the longest prompt of the batch rounded up to a power
of two). What is traced (any value reuses the compilation): tokens, ranks, num_prompt, num_valid and
the keys. So the steady state below varies only the traced arguments, keeps the longest prompt of
every batch in (4, 8] (one prefill bucket), and uses one temperature per method.
"""
from __future__ import annotations

import gc
import os
import time

import jax
import numpy as np
import pytest

from asarm_jax import sampling
from asarm_jax.model import ModelConfig, init_params

NUM_CALLS = 1000
WARMUP_CALLS_PER_SETTING = 25
SHAPES = ((2, 16), (3, 12))  # (B, N)
SETTINGS = (("sequential", 1.0), ("assd", 0.7))  # (method, temperature)
DRAFT_LEN = 4
MAX_RSS_GROWTH_MIB = 50
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _rss_mib() -> float:
  with open("/proc/self/statm") as statm:
    resident_pages = int(statm.read().split()[1])
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Compilations:
  """Counts XLA compilations (every jit, eager op or sampler that is compiled, not cached)."""

  def __init__(self):
    self.count = 0

  def __call__(self, event: str, duration: float, **kwargs):
    del duration, kwargs
    if event == _COMPILE_EVENT:
      self.count += 1


@pytest.fixture
def compilations():
  counter = _Compilations()
  jax.monitoring.register_event_duration_secs_listener(counter)
  yield counter
  jax.monitoring.unregister_event_duration_listener(counter)


def _call(params, cfg: ModelConfig, rng: np.random.Generator, shape, method: str,
          temperature: float, seed: int):
  """One sample() call with fresh tokens, order, prompt lengths, num_valid and key; checks it."""
  batch, length = shape
  tokens = rng.integers(0, cfg.vocab_size - 1, size=(batch, length)).astype(np.int32)
  ranks = np.stack([rng.permutation(length) for _ in range(batch)]).astype(np.int32)
  num_prompt = rng.integers(1, 9, size=batch).astype(np.int32)
  num_prompt[rng.integers(batch)] = rng.integers(5, 9)  # longest prompt in (4, 8]: one bucket
  num_valid = rng.integers(num_prompt + 1, length + 1).astype(np.int32)
  out = sampling.sample(params, cfg, tokens, ranks, num_prompt, jax.random.key(seed),
                        method=method, draft_len=DRAFT_LEN, temperature=temperature,
                        num_valid=num_valid)
  got, nfe = np.asarray(out.tokens), np.asarray(out.nfe)
  del out
  kept = ranks < num_prompt[:, None]
  kept |= ranks >= num_valid[:, None]  # padding comes back as given
  generated = ~kept
  assert (got[kept] == tokens[kept]).all()
  assert (got[generated] >= 0).all() and (got[generated] < cfg.vocab_size).all()
  assert (got[generated] != cfg.mask_token_id).all()
  to_generate = num_valid - num_prompt
  if method == "sequential":
    assert (nfe == to_generate).all()
  else:
    assert (nfe >= 1).all() and (nfe <= to_generate).all()


@pytest.mark.slow
def test_thousand_calls_do_not_recompile_or_grow_memory(compilations):
  cfg = ModelConfig(vocab_size=32, mask_token_id=31, d_model=16, n_layers=1, n_heads=2, d_head=8,
                    d_inner=32, max_len=16)
  params = init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  combos = [(shape, method, temperature) for shape in SHAPES for method, temperature in SETTINGS]

  start = time.perf_counter()
  before_warmup = compilations.count
  seed = 0
  for combo in combos:
    for _ in range(WARMUP_CALLS_PER_SETTING):
      _call(params, cfg, rng, *combo, seed=seed)
      seed += 1
  warmup_s = time.perf_counter() - start
  warmup_compilations = compilations.count - before_warmup
  assert warmup_compilations >= len(combos)  # the counter does see the samplers' compilations
  jit_cache = getattr(getattr(sampling, "_run", None), "_cache_size", None)
  cache_before = jit_cache() if jit_cache else None

  gc.collect()
  rss_before, live_before = _rss_mib(), len(jax.live_arrays())
  compiled_before = compilations.count
  start = time.perf_counter()
  for index in rng.integers(len(combos), size=NUM_CALLS):
    _call(params, cfg, rng, *combos[index], seed=seed)
    seed += 1
  steady_s = time.perf_counter() - start
  gc.collect()
  rss_after, live_after = _rss_mib(), len(jax.live_arrays())

  print(f"\nwarm-up: {len(combos) * WARMUP_CALLS_PER_SETTING} calls, {warmup_compilations} "
        f"compilations, {warmup_s:.1f} s; steady state: {NUM_CALLS} calls in {steady_s:.1f} s "
        f"({1e3 * steady_s / NUM_CALLS:.2f} ms/call), {compilations.count - compiled_before} "
        f"compilations, RSS {rss_before:.1f} -> {rss_after:.1f} MiB, live arrays {live_before} -> "
        f"{live_after}")
  assert compilations.count == compiled_before, "a call within the compiled shapes recompiled"
  if jit_cache:
    assert jit_cache() == cache_before
  assert live_after == live_before, "device arrays leaked"
  assert rss_after - rss_before < MAX_RSS_GROWTH_MIB

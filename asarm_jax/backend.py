"""Lowering choices that depend on the XLA backend, made in this one place.

Some ops are written one way because XLA's CPU backend runs the straightforward form badly; on a
GPU or TPU the straightforward form is the right one. Each such choice is a field of `Choices`,
with the reason next to it. `current()` gives the choices of `jax.default_backend()` unless a
`use(...)` block says otherwise (the tests run both branches on the CPU and compare the numbers).

Choices apply when a function is traced: a jitted function keeps the choices it was traced with.
The samplers carry their choices in their (hashed) static configuration, so a `Sampler` built
under `use(...)` compiles its own program.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import jax


@dataclasses.dataclass(frozen=True)
class Choices:
  """How a backend wants a few ops written.

  Attributes:
    blocked_cumsum: cumulative sums over the vocabulary in blocks of 64 (processors.cumulative_sum).
      XLA's CPU backend lowers `jnp.cumsum` to a reduce-window that costs O(V^2) per row (at 32 rows
      of V = 4096 it was the largest op of a cached decoding step); accelerators have a scan
      lowering, so they use `jnp.cumsum`.
    float32_relative_product: the query x relative-position product in float32 whatever the
      compute dtype (ASARM's attention). The CPU backend has no bf16 x bf16 -> f32 kernel for that
      dot; accelerators multiply bf16 operands natively (accumulating in float32).
    transposed_output_weight: the sampler's cache holds the LM head's weight transposed to [M, V]
      in float32 (ASARM.init_cache). On the CPU that layout multiplies 1.3-2x faster for 2 to 16
      query rows; on an accelerator it only doubles the head's memory, so the head reads the
      embedding [V, M] in place.
    fused_max_batch: the most rows for which `sampling.fastest_method` picks fused ASSD over
      sequential decoding (None: no cap). On the CPU a fused round's 3K + 1 rows per batch row
      are matmul work and a cached sequential step is cheap, so in the default left-to-right
      order fused ASSD was slower at every measured shape, batch 1 included (0; measured: see
      sampling.py); an accelerator's forwards stay bound by reading weights and cache far longer.
    devices_share_host: all devices of a process are slices of one host's cores (the simulated CPU
      devices), so a measured single-device matmul rate is the whole process's peak, not a
      per-device one (train_lib's MFU).
  """
  blocked_cumsum: bool
  float32_relative_product: bool
  transposed_output_weight: bool
  fused_max_batch: int | None
  devices_share_host: bool


CPU = Choices(blocked_cumsum=True, float32_relative_product=True, transposed_output_weight=True,
              fused_max_batch=0, devices_share_host=True)
ACCELERATOR = Choices(blocked_cumsum=False, float32_relative_product=False,
                      transposed_output_weight=False, fused_max_batch=None,
                      devices_share_host=False)

_OVERRIDE: contextvars.ContextVar[Choices | None] = contextvars.ContextVar(
    "asarm_jax_backend_choices", default=None)


def for_backend(name: str) -> Choices:
  """The choices for the XLA backend `name` ("cpu", "gpu", "cuda", "rocm", "tpu", ...)."""
  return CPU if name == "cpu" else ACCELERATOR


def current() -> Choices:
  """The choices in force: the innermost `use(...)` block's, else jax.default_backend()'s."""
  override = _OVERRIDE.get()
  return override if override is not None else for_backend(jax.default_backend())


@contextlib.contextmanager
def use(choices: Choices) -> Iterator[Choices]:
  """Traces inside the block use `choices` (e.g. `use(ACCELERATOR)` to test that branch on CPU)."""
  if not isinstance(choices, Choices):
    raise TypeError(f"choices must be a backend.Choices; got {type(choices).__name__}")
  token = _OVERRIDE.set(choices)
  try:
    yield choices
  finally:
    _OVERRIDE.reset(token)

"""Training metrics: writers (JSONL, log, TensorBoard), FLOPs and MFU, unigram entropy."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from asarm_jax import tensorboard_writer
from asarm_jax.model import ModelConfig

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl`, the log, and TensorBoard (`workdir/tensorboard`).

  Only process 0 writes: with `enabled=False` every method does nothing.
  """

  def __init__(self, workdir: str | epath.PathLike, *, enabled: bool = True):
    self._enabled = enabled
    self._file = None
    self._tensorboard = None
    if not enabled:
      return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._file = (workdir / METRICS_FILE).open("a")
    self._tensorboard = tensorboard_writer.ScalarWriter(workdir / TENSORBOARD_DIR)

  @property
  def has_tensorboard(self) -> bool:
    """Whether an event file is open (process 0, before `close`)."""
    return self._tensorboard is not None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    """Appends `scalars` (name -> number) at `step` to the JSONL file, the log and TensorBoard."""
    if not self._enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._file.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self._file.flush()
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.5g}" for k, v in values.items()))
    self._tensorboard.write_scalars(step, values)

  def close(self):
    """Closes the JSONL and event files; safe to call twice."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None


def read_metrics(workdir: str | epath.PathLike) -> list[dict[str, Any]]:
  """All records of `workdir/metrics.jsonl`, in order."""
  path = epath.Path(workdir) / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Matmul FLOPs of one full forward (both streams, all N query rows), per token.

  Per layer and token: content stream q, k, v, o projections and the feed-forward; query stream q, o
  and the feed-forward; in each stream the scores against N keys, the relative-position scores
  against 2N - 1 distances and the weighted sum of N values; plus the projection of the 2N - 1
  relative embeddings (once per layer, shared by both streams' rows). Then the LM head.
  """
  d, hd, n = cfg.d_model, cfg.n_heads * cfg.d_head, seq_len
  feed_forward = 2 * 2 * d * cfg.d_inner
  attention = 2 * n * hd + 2 * (2 * n - 1) * hd + 2 * n * hd
  relative = 2 * (2 * n - 1) * d * hd / n
  content = 4 * 2 * d * hd + feed_forward + attention + relative
  query = 2 * 2 * d * hd + feed_forward + attention
  return cfg.n_layers * (content + query) + 2 * d * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward + backward (2x forward) matmul FLOPs per token."""
  return 3.0 * forward_flops_per_token(cfg, seq_len)


def measure_matmul_peak(dtype: Any = jnp.float32, size: int = 2048, repeats: int = 5) -> float:
  """Measured FLOP/s of a square matmul on one device (the default one; best of `repeats`)."""
  dtype = jnp.dtype(dtype)
  a = jnp.ones((size, size), dtype)
  b = jnp.ones((size, size), dtype)
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


def unigram_entropy(token_batches: Iterable[np.ndarray], valid_batches: Iterable[np.ndarray],
                    vocab_size: int) -> tuple[float, int]:
  """Entropy (nats) of the empirical unigram distribution of the valid tokens, and their count.

  This is the loss of the best context-free predictor fitted to these very tokens: a model that
  uses context must beat it.
  """
  counts = np.zeros((vocab_size,), np.int64)
  for tokens, valid in zip(token_batches, valid_batches):
    counts += np.bincount(np.asarray(tokens)[np.asarray(valid, bool)], minlength=vocab_size)
  total = int(counts.sum())
  if total == 0:
    return float("nan"), 0
  p = counts[counts > 0] / total
  return float(-(p * np.log(p)).sum()), total

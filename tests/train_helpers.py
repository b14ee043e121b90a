"""Shared helpers of the training tests: tiny configs, synthetic batches, trainers on any mesh."""
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "configs"))

import default  # noqa: E402  (configs/default.py)

from asarm_jax import run_config  # noqa: E402
from asarm_jax import sharding  # noqa: E402
from asarm_jax import train_lib  # noqa: E402

VOCAB = 64
MASK_ID = 3


def tiny_config(**overrides):
  """The default config shrunk to a model that trains in milliseconds per step.

  Keys of `overrides` are dotted paths ('optimizer.learning_rate').
  """
  config = default.get_config()
  config.model.update(d_model=32, n_layers=2, n_heads=2, d_head=16, d_inner=64, max_len=64)
  config.data.update(vocab_size=400, tokenizer_max_chars=300_000, max_documents=40,
                     read_threads=1)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=0, decay="constant")
  config.update(seq_len=16, batch_size=8, num_train_steps=4, log_every_steps=1,
                eval_every_steps=1000, num_eval_batches=1, eval_batch_size=8,
                checkpoint_every_steps=1000, progress_bar=False, measure_peak_flops=False)
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def synthetic_batch(batch_size, seq_len, seed=0, vocab=VOCAB, padded_rows=1):
  """A batch with a few padded tails: 'tokens' int32 [B, N], 'valid' bool [B, N]."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, (batch_size, seq_len)).astype(np.int32)
  lengths = np.full((batch_size,), seq_len)
  lengths[:padded_rows] = rng.integers(1, seq_len, padded_rows)
  valid = np.arange(seq_len)[None, :] < lengths[:, None]
  return {"tokens": np.where(valid, tokens, 0).astype(np.int32), "valid": valid}


def make_trainer(mesh_shape, devices, **overrides):
  """A Trainer of `tiny_config(**overrides)` (VOCAB tokens) on a `mesh_shape` mesh of `devices`;
  a mesh that does not fit the batch sizes raises ValueError (`train_lib.check_mesh`)."""
  run = run_config.parse(tiny_config(mesh_shape=mesh_shape, **overrides))
  mesh = sharding.make_mesh(mesh_shape, devices)
  train_lib.check_mesh(run, mesh)  # as train_and_evaluate does
  return train_lib.Trainer(run, run.model_config(VOCAB, MASK_ID), mesh)


def train_steps(trainer, state, steps, rows=slice(None)):
  """Trains `state` on the synthetic global batches of `steps` (seed = step, 2 padded rows of 8).

  Args:
    trainer: a Trainer (see `make_trainer`).
    state: its TrainState; donated: do not use it afterwards.
    steps: the step numbers (each picks its batch and its PRNG key).
    rows: the rows of each global batch that this process feeds (see
      `sharding.process_data_shard`); all of them in a single process.

  Returns:
    (the new state, the loss of each step).
  """
  losses = []
  for step in steps:
    local = {k: v[rows] for k, v in synthetic_batch(8, 16, seed=step, padded_rows=2).items()}
    state, metrics = trainer.train_step(state, trainer.global_batch(local, 8),
                                        trainer.step_key(state, step))
    losses.append(float(metrics.compute()["loss"]))
  return state, losses

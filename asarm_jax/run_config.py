"""The training config: its schema, and checks that run before any work starts.

A training config is an `ml_collections.ConfigDict` (see configs/default.py) whose keys are the
fields of `RunConfig`: the sections `model`, `data`, `objective` and `optimizer` and the top-level
settings. `parse` turns it into typed, validated dataclasses and rejects unknown or missing keys by
name; the data sources are opened by `train_lib.train_and_evaluate` before any work. Errors are
ValueError with a message naming the key.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from asarm_jax import config_util
from asarm_jax.data import files_source
from asarm_jax.model import ModelConfig
from asarm_jax.objective import MaskingConfig

SCHEDULE_DECAYS = ("linear", "cosine", "constant")
NONFINITE_POLICIES = ("skip", "stop")
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}  # field type -> conversion


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with linear warm-up, then linear / cosine decay (or constant), and gradient clipping.

  Attributes:
    learning_rate: peak learning rate at a global batch of `lr_scaling_batch` examples.
    lr_scaling_batch: the peak is learning_rate * batch_size / lr_scaling_batch (linear scaling);
      0 disables scaling.
    warmup_steps: linear warm-up from 0 to the peak.
    decay: 'linear', 'cosine' or 'constant' after the warm-up, until num_train_steps.
    end_lr_factor: the final learning rate as a fraction of the peak.
    weight_decay: AdamW decoupled weight decay (matrices and embeddings only; biases, layer norms,
      attention biases and the mask embedding are not decayed).
    b1, b2, eps: Adam's moments.
    grad_clip_norm: clip the global gradient norm to this (0 disables).
  """
  learning_rate: float = 1e-3
  lr_scaling_batch: int = 0
  warmup_steps: int = 100
  decay: str = "linear"
  end_lr_factor: float = 0.0
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float = 1.0

  def __post_init__(self):
    if self.decay not in SCHEDULE_DECAYS:
      raise ValueError(f"optimizer.decay must be one of {SCHEDULE_DECAYS}; got {self.decay!r}")
    if self.learning_rate <= 0 or self.lr_scaling_batch < 0 or self.warmup_steps < 0:
      raise ValueError("optimizer.learning_rate must be > 0, lr_scaling_batch and warmup_steps "
                       f">= 0; got {self.learning_rate}, {self.lr_scaling_batch}, "
                       f"{self.warmup_steps}")
    if not 0.0 <= self.end_lr_factor <= 1.0 or self.grad_clip_norm < 0 or self.weight_decay < 0:
      raise ValueError("optimizer.end_lr_factor must be in [0, 1], grad_clip_norm and "
                       "weight_decay >= 0")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where documents come from and how the tokenizer is made.

  Attributes:
    source: 'stdlib', 'tfds:<name>' or 'files:<dir>' (see asarm_jax.data.sources).
    train_split, eval_split: split names of the source ('train' and 'validation' for files).
    text_key, data_dir: TFDS feature holding the text, TFDS data directory (None: default).
    file_glob, max_bytes: a 'files:<dir>' source reads the files matching this glob, leaving out
      those larger than max_bytes (asarm_jax.data.files_source).
    max_documents: use only the first documents of each split (None: all).
    tokenizer_path: an existing tokenizer.model to use; None trains one at the start of the run.
    vocab_size: target vocabulary size of a trained tokenizer.
    tokenizer_max_chars: characters of training text the tokenizer reads.
    read_threads: grain threads reading and tokenizing documents.
  """
  source: str = "stdlib"
  train_split: str = "train"
  eval_split: str = "validation"
  text_key: str = "text"
  data_dir: str | None = None
  file_glob: str = files_source.DEFAULT_GLOB
  max_bytes: int = files_source.DEFAULT_MAX_BYTES
  max_documents: int | None = None
  tokenizer_path: str | None = None
  vocab_size: int = 8192
  tokenizer_max_chars: int = 10_000_000
  read_threads: int = 2

  def source_options(self) -> dict[str, Any]:
    """The keyword arguments of `asarm_jax.data.open_source` that this config sets."""
    return dict(text_key=self.text_key, data_dir=self.data_dir, file_glob=self.file_glob,
                max_bytes=self.max_bytes)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A parsed, validated training config: its fields are the config's keys (model sizes without
  the vocabulary, which the tokenizer decides)."""
  model: dict[str, Any]
  data: DataConfig
  objective: MaskingConfig
  optimizer: OptimizerConfig
  seed: int
  distributed: str
  seq_len: int
  batch_size: int
  grad_accum_steps: int
  num_train_steps: int
  mesh_shape: tuple[int, ...]
  logical_axis_rules: tuple | None
  log_every_steps: int
  eval_every_steps: int
  num_eval_batches: int
  eval_batch_size: int
  eval_rates: tuple[float, ...]
  checkpoint_every_steps: int
  keep_checkpoints: int
  async_checkpointing: bool
  progress_bar: bool
  measure_peak_flops: bool
  init_from: str | None = None
  nonfinite_policy: str = "skip"

  def model_config(self, vocab_size: int, mask_token_id: int) -> ModelConfig:
    return ModelConfig.from_dict({**self.model, "vocab_size": vocab_size,
                                  "mask_token_id": mask_token_id})

  @property
  def micro_batch_size(self) -> int:
    return self.batch_size // self.grad_accum_steps

  def identity(self) -> dict[str, Any]:
    """What a resumed run must share with the run in its workdir: the architecture, the tokenizer
    and the sequence length."""
    data = self.data
    tokenizer = {"source": data.source, "train_split": data.train_split,
                 "text_key": data.text_key, "max_documents": data.max_documents,
                 "tokenizer_path": data.tokenizer_path, "vocab_size": data.vocab_size,
                 "tokenizer_max_chars": data.tokenizer_max_chars, "seed": self.seed,
                 "init_from": self.init_from}
    if data.source.startswith(files_source.FILES_PREFIX):  # (runs of other sources predate these)
      tokenizer.update(file_glob=data.file_glob, max_bytes=data.max_bytes)
    return {"model": dict(self.model), "seq_len": self.seq_len, "tokenizer": tokenizer}


def parse(config: ml_collections.ConfigDict) -> RunConfig:
  """Validates `config` and returns it typed.

  Raises:
    ValueError: unknown or missing keys (named), invalid values, seq_len above model.max_len, a
      batch size not divisible by grad_accum_steps.
  """
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  config_util.reject_unknown_keys(RunConfig, values, owner="config")
  fields = dataclasses.fields(RunConfig)
  missing = sorted(f.name for f in fields if f.name not in values)
  if missing:
    raise ValueError(f"config lacks keys {missing}")
  model = dict(values["model"])
  for key in ("vocab_size", "mask_token_id"):
    if key in model:
      raise ValueError(f"config.model.{key} is set by the tokenizer; remove it from the config")
  # Validate the model section now with a stand-in vocabulary.
  _ = ModelConfig.from_dict({**model, "vocab_size": 8, "mask_token_id": 0})
  sections = {name: config_util.from_dict(cls, values[name], owner="config", prefix=f"{name}.")
              for name, cls in (("data", DataConfig), ("objective", MaskingConfig),
                                ("optimizer", OptimizerConfig))}
  scalars = {f.name: _SCALARS[f.type](values[f.name]) for f in fields if f.type in _SCALARS}
  run = RunConfig(**{
      **values, **scalars, **sections, "model": model,
      "mesh_shape": tuple(values["mesh_shape"]),
      "logical_axis_rules": (None if values["logical_axis_rules"] is None
                             else tuple(values["logical_axis_rules"])),
      "eval_rates": tuple(float(r) for r in values["eval_rates"]),
      "init_from": values["init_from"] or None,
  })
  _check_values(run)
  return run


def _check_values(run: RunConfig):
  max_len = run.model.get("max_len", ModelConfig.max_len)
  if not 0 < run.seq_len <= max_len:
    raise ValueError(f"seq_len = {run.seq_len} must be in [1, model.max_len = {max_len}]")
  positive = {"batch_size": run.batch_size, "grad_accum_steps": run.grad_accum_steps,
              "num_train_steps": run.num_train_steps, "log_every_steps": run.log_every_steps,
              "eval_every_steps": run.eval_every_steps,
              "checkpoint_every_steps": run.checkpoint_every_steps,
              "keep_checkpoints": run.keep_checkpoints, "eval_batch_size": run.eval_batch_size,
              "data.vocab_size": run.data.vocab_size, "data.read_threads": run.data.read_threads}
  for name, value in positive.items():
    if value <= 0:
      raise ValueError(f"config.{name} must be positive; got {value}")
  if run.num_eval_batches < 0:
    raise ValueError(f"config.num_eval_batches must be >= 0; got {run.num_eval_batches}")
  if run.batch_size % run.grad_accum_steps:
    raise ValueError(f"batch_size = {run.batch_size} is not divisible by grad_accum_steps = "
                     f"{run.grad_accum_steps}")
  if any(not 0.0 <= r <= 1.0 for r in run.eval_rates):
    raise ValueError(f"eval_rates must lie in [0, 1]; got {run.eval_rates}")
  if run.nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(f"nonfinite_policy must be one of {NONFINITE_POLICIES}; got "
                     f"{run.nonfinite_policy!r}")
  if run.distributed not in ("auto", "always", "never"):
    raise ValueError(f"distributed must be 'auto', 'always' or 'never'; got {run.distributed!r}")

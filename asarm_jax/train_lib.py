"""Any-order training: TrainState, optimizer, pure train/eval steps, and the training loop.

`train_and_evaluate(config, workdir)` runs everything: config checks, tokenizer, mesh, sharded state,
checkpoint restore, the loop with periodic held-out evaluation, metrics and checkpoints. See
checkpoint.py for the layout of `workdir` and `load_for_inference` to use the result.
"""

import functools
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from clu import metrics as clu_metrics
from etils import epath
from jax.experimental import multihost_utils

from asarm_jax import backend
from asarm_jax import checkpoint as checkpoint_lib
from asarm_jax import convert_hf
from asarm_jax import data as data_lib
from asarm_jax import loading
from asarm_jax import metrics as metrics_lib
from asarm_jax import objective
from asarm_jax import run_config
from asarm_jax import sharding as sharding_lib
from asarm_jax.model import ModelConfig, init_params, param_logical_axes
from asarm_jax.xlnet_tokenizer import XLNetTokenizer

# What an HF XLNet directory's config.json fixes and init_from's config must repeat; dropout,
# max_len, dtypes and the initializer range stay the training config's choices.
HF_ARCHITECTURE = ["d_model", "n_layers", "n_heads", "d_head", "d_inner", "ff_activation",
                   "layer_norm_eps"]
_NO_DECAY = ("bias", "scale", "r_w_bias", "r_r_bias", "mask_emb", "lm_bias")


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: the model parameters (float32 master weights).
    opt_state: the optax state.
    rng: uint32 key data of the run's base PRNG key (`jax.random.key_data`); step t uses
      `fold_in(key, t)`, so a resumed run draws the same randomness as an uninterrupted one.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  @property
  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.rng)


_NONFINITE_METRICS = ("loss", "grad_norm", "update_norm")  # bit i of `first_nonfinite.which`
_NO_STEP = np.iinfo(np.int32).max


class NonFiniteError(FloatingPointError):
  """A training step produced a non-finite loss, gradient or update (nonfinite_policy='stop')."""


@flax.struct.dataclass
class Count(clu_metrics.Metric):
  """A sum of per-step integers (e.g. skipped updates) over a logging interval."""
  total: jax.Array

  @classmethod
  def from_model_output(cls, value: jax.Array, **_) -> "Count":
    return cls(total=jnp.asarray(value, jnp.int32))

  @classmethod
  def empty(cls) -> "Count":
    return cls(total=jnp.zeros((), jnp.int32))

  def merge(self, other: "Count") -> "Count":
    return type(self)(total=self.total + other.total)

  def compute(self) -> jax.Array:
    return self.total


@flax.struct.dataclass
class FirstNonFinite(clu_metrics.Metric):
  """The first step of an interval whose update was non-finite (`_NO_STEP` if none), and which of
  `_NONFINITE_METRICS` were non-finite then (a bit mask)."""
  step: jax.Array
  which: jax.Array

  @classmethod
  def from_model_output(cls, step: jax.Array, which: jax.Array, **_) -> "FirstNonFinite":
    which = jnp.asarray(which, jnp.int32)
    return cls(step=jnp.where(which > 0, jnp.asarray(step, jnp.int32), _NO_STEP), which=which)

  @classmethod
  def empty(cls) -> "FirstNonFinite":
    return cls(step=jnp.asarray(_NO_STEP, jnp.int32), which=jnp.zeros((), jnp.int32))

  def merge(self, other: "FirstNonFinite") -> "FirstNonFinite":
    first = self.step <= other.step
    return type(self)(step=jnp.where(first, self.step, other.step),
                      which=jnp.where(first, self.which, other.which))

  def compute(self) -> tuple[int | None, list[str]]:
    step, which = int(self.step), int(self.which)
    return (None if step == _NO_STEP else step,
            [name for i, name in enumerate(_NONFINITE_METRICS) if which >> i & 1])


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Per-step training metrics, merged over a logging interval."""
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Average.from_output("accuracy")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")
  min_masking_rate: clu_metrics.LastValue.from_output("min_masking_rate")
  max_masking_rate: clu_metrics.LastValue.from_output("max_masking_rate")
  skipped_updates: Count
  first_nonfinite: FirstNonFinite

  def compute(self) -> dict[str, Any]:
    """The logged values; `first_nonfinite` is left out (see `_check_finite`)."""
    values = super().compute()
    values.pop("first_nonfinite")
    return values


def learning_rate_schedule(opt: run_config.OptimizerConfig, *, num_train_steps: int,
                           batch_size: int) -> optax.Schedule:
  """Linear warm-up to the (batch-scaled) peak, then linear / cosine decay or constant."""
  peak = opt.learning_rate
  if opt.lr_scaling_batch:
    peak *= batch_size / opt.lr_scaling_batch
  decay_steps = max(num_train_steps - opt.warmup_steps, 1)
  if opt.decay == "linear":
    decay = optax.linear_schedule(peak, peak * opt.end_lr_factor, decay_steps)
  elif opt.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_lr_factor)
  else:
    decay = optax.constant_schedule(peak)
  if not opt.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, peak, opt.warmup_steps)
  return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def _decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: matrices and embeddings."""
  def decays(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    return leaf.ndim >= 2 and name not in _NO_DECAY
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt: run_config.OptimizerConfig, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """Gradient clipping then AdamW."""
  clip = optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm else optax.identity()
  return optax.chain(clip, optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                       weight_decay=opt.weight_decay, mask=_decay_mask))


def init_state(rng: jax.Array, model_cfg: ModelConfig,
               tx: optax.GradientTransformation) -> TrainState:
  """A fresh TrainState (use under jit with out_shardings to create it sharded)."""
  param_rng, run_rng = jax.random.split(rng)
  params = init_params(model_cfg, param_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(run_rng))


def _split_micro_batches(tree: Any, accum_steps: int) -> Any:
  """[B, ...] -> [K, B / K, ...]; micro-batch k holds rows k, K + k, 2K + k, ... so every device
  keeps its rows when the batch axis is sharded."""
  def split(x):
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, tree)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               model_cfg: ModelConfig, masking: objective.MaskingConfig,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               accum_steps: int = 1) -> tuple[TrainState, TrainMetrics]:
  """One optimizer step of the any-order objective.

  The loss is the mean cross-entropy over all hidden tokens of the batch. Masking rates (stratified
  over the whole batch), hidden sets and orders are drawn for the whole batch; with
  accum_steps K > 1 the model then runs on K micro-batches whose summed gradients are divided by
  the total number of hidden tokens: the same update as one pass over the whole batch (up to
  float rounding, and dropout masks).

  Args:
    state: the TrainState.
    batch: 'tokens' int32 [B, N], 'valid' bool [B, N].
    rng: this step's PRNG key.
    model_cfg, masking, tx, schedule: static configuration.
    accum_steps: gradient-accumulation micro-batches per step (divides B).

  A step whose loss, gradient norm or update norm is non-finite applies no update: params and
  optimizer state stay as they were, the step counter still advances (the batch is consumed and
  step t + 1 gets its own randomness, so a run with a skipped step stays reproducible), and the
  metrics count it in `skipped_updates` and record it in `first_nonfinite`. The check is on device;
  the host reads it only when it logs or checkpoints (see `_check_finite`).

  Returns:
    (the new state, this step's TrainMetrics).
  """
  order_rng, dropout_rng = jax.random.split(rng)
  tokens = batch["tokens"]
  valid = batch.get("valid")
  if valid is None:
    valid = jnp.ones(tokens.shape, bool)
  low, high = objective.rate_range(masking, state.step)
  order = objective.draw_order(order_rng, valid, masking, state.step)
  micro = _split_micro_batches({"tokens": tokens, "order": order}, accum_steps)

  def summed_loss(params, micro_batch, micro_rng):
    _, loss_metrics = objective.order_loss(params, micro_batch["tokens"], micro_batch["order"],
                                           model_cfg=model_cfg, dropout_rng=micro_rng)
    return loss_metrics.loss.total, loss_metrics

  grad_fn = jax.grad(summed_loss, has_aux=True)

  def accumulate(carry, index):
    grads, loss_metrics = carry
    micro_batch = jax.tree.map(lambda x: x[index], micro)
    micro_grads, micro_metrics = grad_fn(state.params, micro_batch,
                                         jax.random.fold_in(dropout_rng, index))
    grads = jax.tree.map(jnp.add, grads, micro_grads)
    return (grads, loss_metrics.merge(micro_metrics)), None

  if accum_steps == 1:
    grads, loss_metrics = grad_fn(state.params, jax.tree.map(lambda x: x[0], micro),
                                  jax.random.fold_in(dropout_rng, 0))
  else:
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, loss_metrics), _ = jax.lax.scan(
        accumulate, (zeros, objective.LossMetrics.empty()), jnp.arange(accum_steps))
  count = jnp.maximum(loss_metrics.loss.count, 1).astype(jnp.float32)
  grads = jax.tree.map(lambda g: g / count, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  checked = (loss_metrics.loss.total, grad_norm, optax.global_norm(updates))
  which = sum(jnp.where(jnp.isfinite(x), 0, 1 << i).astype(jnp.int32)
              for i, x in enumerate(checked))
  finite = which == 0
  params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
  opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state,
                           state.opt_state)
  metrics = TrainMetrics.empty().replace(
      loss=loss_metrics.loss, accuracy=loss_metrics.accuracy,
      grad_norm=clu_metrics.Average.from_model_output(grad_norm),
      learning_rate=clu_metrics.LastValue.from_model_output(
          jnp.asarray(schedule(state.step), jnp.float32)),
      min_masking_rate=clu_metrics.LastValue.from_model_output(low),
      max_masking_rate=clu_metrics.LastValue.from_model_output(high),
      skipped_updates=Count.from_model_output(jnp.logical_not(finite)),
      first_nonfinite=FirstNonFinite.from_model_output(state.step, which))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], rng: jax.Array, low: jax.Array,
              high: jax.Array, *, model_cfg: ModelConfig, masking: objective.MaskingConfig
              ) -> objective.LossMetrics:
  """Held-out metrics with masking rates stratified over [low, high] (low == high: a fixed rate)."""
  rate_rng, rng = jax.random.split(rng)
  rates = objective.sample_rates(rate_rng, batch["tokens"].shape[0], low, high,
                                 stratified=masking.stratified)
  _, loss_metrics = objective.any_order_loss(params, batch, rng, model_cfg=model_cfg,
                                             masking=masking, rates=rates, deterministic=True)
  return loss_metrics


def check_mesh(run: run_config.RunConfig, mesh: jax.sharding.Mesh) -> None:
  """Raises ValueError unless the mesh's data x fsdp size divides the run's (micro and eval) batch
  sizes."""
  sharding_lib.check_batch_divisible(run.micro_batch_size, mesh, "batch_size / grad_accum_steps")
  sharding_lib.check_batch_divisible(run.eval_batch_size, mesh, "eval_batch_size")


class Trainer:
  """The sharded, jitted pieces of a run: mesh, state shardings, init, train and eval steps.

  The mesh must fit the run's batch sizes (`check_mesh`, which `train_and_evaluate` runs before
  any work).
  """

  def __init__(self, run: run_config.RunConfig, model_cfg: ModelConfig,
               mesh: jax.sharding.Mesh | None = None):
    self.run = run
    self.model_cfg = model_cfg
    self.mesh = sharding_lib.make_mesh(run.mesh_shape) if mesh is None else mesh
    self.rules = sharding_lib.rules_from_config(run.logical_axis_rules)
    self.schedule = learning_rate_schedule(run.optimizer, num_train_steps=run.num_train_steps,
                                           batch_size=run.batch_size)
    self.tx = make_optimizer(run.optimizer, self.schedule)
    self.state_shardings = self._state_shardings()
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    replicated = sharding_lib.replicated(self.mesh)
    init = functools.partial(init_state, model_cfg=model_cfg, tx=self.tx)
    self._init = jax.jit(init, out_shardings=self.state_shardings)
    step = functools.partial(train_step, model_cfg=model_cfg, masking=run.objective, tx=self.tx,
                             schedule=self.schedule, accum_steps=run.grad_accum_steps)
    self._train_step = jax.jit(
        self._in_context(step),
        in_shardings=(self.state_shardings, self.batch_sharding, replicated),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self._step_key = jax.jit(
        lambda rng, step: jax.random.fold_in(jax.random.wrap_key_data(rng), step),
        out_shardings=replicated)
    evaluate = functools.partial(eval_step, model_cfg=model_cfg, masking=run.objective)
    self._eval_step = jax.jit(
        self._in_context(evaluate),
        in_shardings=(self.state_shardings.params, self.batch_sharding, replicated, replicated,
                      replicated),
        out_shardings=replicated)

  def _in_context(self, fn):
    """Traces `fn` with the logical-axis rules and the mesh active (for activation constraints)."""
    @functools.wraps(fn)
    def wrapped(*args):
      with nn.logical_axis_rules(self.rules), jax.sharding.use_abstract_mesh(
          self.mesh.abstract_mesh):
        return fn(*args)
    return wrapped

  def _state_shardings(self) -> TrainState:
    abstract = jax.eval_shape(functools.partial(init_state, model_cfg=self.model_cfg, tx=self.tx),
                              jax.random.key(0))
    params = sharding_lib.logical_shardings(param_logical_axes(self.model_cfg), abstract.params,
                                            self.mesh, self.rules)
    replicated = sharding_lib.replicated(self.mesh)
    opt_state = optax.tree_map_params(self.tx, lambda _, s: s, abstract.opt_state, params,
                                      transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)

  def abstract_state(self) -> TrainState:
    """The state as ShapeDtypeStructs carrying the target shardings (for checkpoint restore)."""
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, self.state_shardings)

  def init(self, seed: int) -> TrainState:
    return self._init(jax.random.key(seed))

  def init_from_checkpoint(self, seed: int, run_dir: str) -> TrainState:
    """A fresh state (step 0, new optimizer state) whose parameters are the latest ones of the
    run in `run_dir`, restored straight into this mesh's shardings."""
    checkpointer = checkpoint_lib.Checkpointer(run_dir, read_only=True, async_save=False)
    try:
      params = checkpointer.restore_params(self.abstract_state().params)
    finally:
      checkpointer.close()
    return self._fresh_state(seed, params)

  def init_from_hf_xlnet(self, seed: int, hf_dir: str) -> TrainState:
    """A fresh state whose parameters are the weights of the Hugging Face XLNet directory
    `hf_dir` (read on the host, then laid out in this mesh's shardings)."""
    abstract = self.abstract_state().params
    _, params = convert_hf.load_hf_xlnet(hf_dir, mask_token_id=self.model_cfg.mask_token_id,
                                         max_len=self.model_cfg.max_len)
    params = jax.tree.map(lambda x, a: np.asarray(x, a.dtype), params, abstract)
    return self._fresh_state(seed, jax.device_put(params, self.state_shardings.params))

  def _fresh_state(self, seed: int, params: Any) -> TrainState:
    """Step 0, a new optimizer state and the run's key, around given parameters."""
    def fresh(params, rng):
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params), rng=jax.random.key_data(rng))
    return jax.jit(fresh, out_shardings=self.state_shardings)(
        params, jax.random.split(jax.random.key(seed))[1])

  def global_batch(self, local_batch: dict[str, np.ndarray], batch_size: int
                   ) -> dict[str, jax.Array]:
    return sharding_lib.global_batch(local_batch, self.mesh, batch_size)

  def step_key(self, state: TrainState, step: int) -> jax.Array:
    """The PRNG key of step `step` of the run whose base key `state` holds."""
    return self._step_key(state.rng, step)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
                 ) -> tuple[TrainState, TrainMetrics]:
    return self._train_step(state, batch, rng)

  def eval_step(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, low: float,
                high: float) -> objective.LossMetrics:
    return self._eval_step(params, batch, rng, jnp.float32(low), jnp.float32(high))


def _eval_settings(run: run_config.RunConfig) -> list[tuple[str, float, float]]:
  """(metric suffix, low, high): the training range after warm-up, then each fixed eval rate."""
  settings = [("", run.objective.min_rate, run.objective.max_rate)]
  settings += [(f"@{rate:g}", rate, rate) for rate in run.eval_rates]
  return settings


def eval_key(seed: int) -> jax.Array:
  """The PRNG key of held-out evaluation: batch i hides the positions drawn from
  `fold_in(eval_key(seed), i)` (here and in `asarm_jax.evals.heldout_loss`)."""
  return jax.random.fold_in(jax.random.key(seed), 0x5EED)


def evaluate(trainer: Trainer, params: Any, batches: list[dict[str, np.ndarray]],
             seed: int) -> dict[str, float]:
  """Held-out loss/accuracy/perplexity under every eval setting; the same hidden sets every call."""
  results = {}
  key = eval_key(seed)
  for suffix, low, high in _eval_settings(trainer.run):
    merged = None
    for index, local_batch in enumerate(batches):
      batch = trainer.global_batch(local_batch, trainer.run.eval_batch_size)
      step_metrics = trainer.eval_step(params, batch, jax.random.fold_in(key, index), low, high)
      merged = step_metrics if merged is None else merged.merge(step_metrics)
    if merged is None:
      continue
    values = merged.compute()
    results[f"eval/loss{suffix}"] = float(values["loss"])
    results[f"eval/accuracy{suffix}"] = float(values["accuracy"])
    results[f"eval/hidden_tokens{suffix}"] = float(merged.loss.count)
  return results


def _get_tokenizer(run: run_config.RunConfig, workdir: epath.Path
                   ) -> data_lib.Tokenizer | XLNetTokenizer:
  """The run's tokenizer: the workdir's (resume), init_from's (XLNet's for an HF XLNet directory,
  ours for the export of one of our runs), the configured file, or trained now."""
  if (workdir / checkpoint_lib.RUN_FILE).exists():
    return checkpoint_lib.load_tokenizer(workdir)
  saved = workdir / checkpoint_lib.TOKENIZER_FILE
  if saved.exists():  # trained by an earlier start that stopped before writing run.json
    return data_lib.Tokenizer.load(saved)
  if run.init_from:
    if loading.kind(run.init_from) == loading.HF_XLNET:
      return loading.read_hf_xlnet_config(run.init_from)[1]
    return checkpoint_lib.load_tokenizer(run.init_from)
  if run.data.tokenizer_path:
    return data_lib.Tokenizer.load(run.data.tokenizer_path)
  if jax.process_index() == 0:
    start = time.perf_counter()
    texts = data_lib.load_texts(run.data.source, run.data.train_split,
                                max_documents=run.data.max_documents,
                                **run.data.source_options())
    tokenizer = data_lib.train_tokenizer(texts, run.data.vocab_size,
                                         max_chars=run.data.tokenizer_max_chars, seed=run.seed)
    tokenizer.save(saved)
    logging.info("Trained a %d-piece tokenizer in %.1f s", tokenizer.vocab_size,
                 time.perf_counter() - start)
  multihost_utils.sync_global_devices("tokenizer")
  return data_lib.Tokenizer.load(saved)


def _check_init_from(run: run_config.RunConfig):
  """Raises unless `run.init_from` is a run directory with a checkpoint of the same model, or a
  Hugging Face XLNet directory of the same architecture (`HF_ARCHITECTURE`: the model section's
  other keys are this run's choices), with no data.tokenizer_path (init_from brings its tokenizer).
  """
  source = run.init_from
  if not epath.Path(source).is_dir():
    raise FileNotFoundError(f"init_from={source} does not exist or is not a directory")
  if run.data.tokenizer_path:
    raise ValueError(f"data.tokenizer_path={run.data.tokenizer_path} and init_from={source} are "
                     "both set: init_from brings its own tokenizer; unset data.tokenizer_path")
  found = loading.kind(source)
  if found is None:
    raise FileNotFoundError(
        f"init_from={source} is not a training run directory ({checkpoint_lib.RUN_FILE} not "
        f"found) nor a Hugging Face XLNet directory ({loading.HF_CONFIG} not found)")
  if found == loading.HF_XLNET:
    try:
      theirs, tokenizer = loading.read_hf_xlnet_config(source)
    except (ValueError, FileNotFoundError) as error:
      raise type(error)(f"init_from={source}: {error}") from None
    ours = run.model_config(tokenizer.vocab_size, tokenizer.mask_id).to_dict()
    _check_same_model(source, theirs.to_dict(), ours, HF_ARCHITECTURE, where="in its config.json")
    return
  theirs = checkpoint_lib.read_run(source)["model"]
  ours = run.model_config(theirs["vocab_size"], theirs["mask_token_id"]).to_dict()
  _check_same_model(source, theirs, ours, [k for k in ours if k not in ("vocab_size",
                                                                       "mask_token_id")])
  checkpointer = checkpoint_lib.Checkpointer(source, read_only=True, async_save=False)
  try:
    if checkpointer.latest_step is None:
      raise FileNotFoundError(f"no checkpoint found in {checkpointer.directory} (init_from)")
  finally:
    checkpointer.close()


def _check_same_model(source: str, theirs: dict[str, Any], ours: dict[str, Any],
                      keys: list[str], where: str = "there"):
  """Raises ValueError naming each of `keys` on which the two ModelConfig dicts differ."""
  differences = sorted(k for k in keys if ours[k] != theirs.get(k))
  if differences:
    raise ValueError(f"init_from={source} has a different model: " + ", ".join(
        f"model.{k}: {theirs.get(k)!r} {where}, {ours[k]!r} here" for k in differences))


def _data_kwargs(run: run_config.RunConfig, shard_index: int, shard_count: int) -> dict[str, Any]:
  return dict(process_index=shard_index, process_count=shard_count,
              max_documents=run.data.max_documents, **run.data.source_options(),
              read_options=grain.ReadOptions(
                  num_threads=run.data.read_threads, prefetch_buffer_size=16))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains an AS-ARM with the any-order objective and evaluates it on held-out data.

  Every check (config keys and values, mesh and batch sizes, data sources, compatibility with a
  run already in `workdir`) happens before any work. A workdir with checkpoints is resumed from
  the latest one, also with another process count (the data stream then starts afresh: see
  `Checkpointer.restore`).

  Args:
    config: a training config (see configs/default.py).
    workdir: the run directory (see checkpoint.py for its layout).

  Returns:
    The last evaluation's metrics and the run's summary numbers.
  """
  run = run_config.parse(config)
  sharding_lib.maybe_initialize_distributed(run.distributed)
  workdir = epath.Path(workdir)
  checkpoint_lib.check_compatible(workdir, run.identity())
  if run.init_from:
    _check_init_from(run)
  mesh = sharding_lib.make_mesh(run.mesh_shape)
  check_mesh(run, mesh)
  for split in (run.data.train_split, run.data.eval_split):
    data_lib.open_source(run.data.source, split, **run.data.source_options())
  if run.data.tokenizer_path and not epath.Path(run.data.tokenizer_path).is_file():
    raise FileNotFoundError(f"Tokenizer model not found: {run.data.tokenizer_path} "
                            "(data.tokenizer_path)")
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  run_start = time.perf_counter()

  tokenizer = _get_tokenizer(run, workdir)
  model_cfg = run.model_config(tokenizer.vocab_size, tokenizer.mask_id)
  if is_main:
    checkpoint_lib.write_run(workdir, identity=run.identity(), model_cfg=model_cfg,
                             config=config.to_dict(), tokenizer=tokenizer)
  trainer = Trainer(run, model_cfg, mesh)

  shard_index, shard_count, local_batch = sharding_lib.process_data_shard(mesh, run.batch_size)
  train_iter = data_lib.train_iterator(
      run.data.source, tokenizer, run.seq_len, local_batch, seed=run.seed,
      split=run.data.train_split, **_data_kwargs(run, shard_index, shard_count))
  eval_index, eval_count, eval_local = sharding_lib.process_data_shard(mesh, run.eval_batch_size)
  eval_batches = list(data_lib.eval_batches(
      run.data.source, run.data.eval_split, tokenizer, run.seq_len, eval_local,
      num_batches=run.num_eval_batches, **_data_kwargs(run, eval_index, eval_count)))

  checkpointer = checkpoint_lib.Checkpointer(
      workdir, save_every_steps=run.checkpoint_every_steps, keep=run.keep_checkpoints,
      async_save=run.async_checkpointing)
  if checkpointer.latest_step is not None:
    state = checkpointer.restore_latest_good(trainer.abstract_state(), train_iter)
    logging.info("Resumed from %s at step %d", checkpointer.directory, int(state.step))
  elif run.init_from and loading.kind(run.init_from) == loading.HF_XLNET:
    state = trainer.init_from_hf_xlnet(run.seed, run.init_from)
    logging.info("Initialized the parameters from the Hugging Face XLNet directory %s",
                 run.init_from)
  elif run.init_from:
    state = trainer.init_from_checkpoint(run.seed, run.init_from)
    logging.info("Initialized the parameters from %s", run.init_from)
  else:
    state = trainer.init(run.seed)
  start_step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)

  summary = _run_summary(run, model_cfg, eval_batches, writer, start_step)
  try:
    summary.update(_train_loop(run, trainer, state, train_iter, eval_batches, checkpointer,
                               writer, start_step, summary))
  finally:
    checkpointer.close()
    writer.close()
  summary["time/total_s"] = time.perf_counter() - run_start
  if is_main and "train/preempted_at_step" not in summary:
    writer = metrics_lib.MetricWriter(workdir)
    writer.write_scalars(run.num_train_steps, {"time/total_s": summary["time/total_s"]})
    writer.close()
  return summary


def _run_summary(run: run_config.RunConfig, model_cfg: ModelConfig,
                 eval_batches: list[dict[str, np.ndarray]], writer: metrics_lib.MetricWriter,
                 step: int) -> dict[str, float]:
  """Numbers fixed for the run: sizes, FLOPs per token, measured peak, held-out unigram entropy."""
  n_params = sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))))
  local_entropy_counts = [(b["tokens"], b["valid"]) for b in eval_batches]
  entropy, count = metrics_lib.unigram_entropy([t for t, _ in local_entropy_counts],
                                               [v for _, v in local_entropy_counts],
                                               model_cfg.vocab_size)
  summary = {"model/params": float(n_params), "model/vocab_size": float(model_cfg.vocab_size),
             "train/flops_per_token": metrics_lib.train_flops_per_token(model_cfg, run.seq_len),
             "eval/unigram_entropy": entropy, "eval/tokens": float(count)}
  if run.measure_peak_flops:
    summary["train/peak_flops"] = peak_flops(model_cfg)
  writer.write_scalars(step, summary)
  return summary


def peak_flops(model_cfg: ModelConfig) -> float:
  """The run's matmul peak (FLOP/s in the compute dtype): one device's measured rate times the
  devices that have their own compute (the processes, where a process's devices share its host's
  cores: backend.py)."""
  rate = metrics_lib.measure_matmul_peak(model_cfg.compute_dtype)
  shared = backend.current().devices_share_host
  return rate * (jax.process_count() if shared else jax.device_count())


class _StopSignal:
  """Within the block, SIGTERM and SIGINT (Ctrl-C) set `received` (the signal number) instead of
  killing the process; the loop checkpoints and stops at the next step boundary. A second signal
  acts as it would outside the block (Ctrl-C twice interrupts at once). Only the main thread can
  install handlers; elsewhere this is a no-op."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    self.received = signum
    self._restore()

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __enter__(self) -> "_StopSignal":
    if threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, self._handle) for signum in self._SIGNALS}
    return self

  def __exit__(self, *exc_info):
    self._restore()


def _check_finite(run: run_config.RunConfig, interval_metrics: TrainMetrics,
                  checkpointer: checkpoint_lib.Checkpointer):
  """With nonfinite_policy='stop', raises NonFiniteError if any step of the interval had a
  non-finite loss, gradient or update. Called before the interval's state is checkpointed."""
  if run.nonfinite_policy != "stop":
    return
  step, which = interval_metrics.first_nonfinite.compute()
  if step is None:
    return
  raise NonFiniteError(
      f"non-finite {', '.join(which)} at step {step} (the update from step {step} to "
      f"{step + 1}, on training batch index {step}, 0-based); nonfinite_policy='stop', so no "
      f"checkpoint of a later state was written. The latest checkpoint is step "
      f"{checkpointer.latest_step} in {checkpointer.directory}.")


def _train_loop(run: run_config.RunConfig, trainer: Trainer, state: TrainState,
                train_iter: Iterator[dict[str, np.ndarray]],
                eval_batches: list[dict[str, np.ndarray]],
                checkpointer: checkpoint_lib.Checkpointer, writer: metrics_lib.MetricWriter,
                start_step: int, summary: dict[str, float]) -> dict[str, float]:
  if start_step >= run.num_train_steps:  # a finished run: evaluate its final parameters
    results = evaluate(trainer, state.params, eval_batches, run.seed) if eval_batches else {}
    writer.write_scalars(start_step, results)
    return results
  tokens_per_step = run.batch_size * run.seq_len
  results: dict[str, float] = {}
  progress = tqdm.tqdm(total=run.num_train_steps, initial=start_step, unit="step",
                       disable=not (run.progress_bar and jax.process_index() == 0),
                       dynamic_ncols=True)
  interval_metrics = None
  interval_start, interval_steps = time.perf_counter(), 0
  train_time = 0.0
  skipped_total = 0
  with _StopSignal() as stop_signal:
    for step in range(start_step, run.num_train_steps):
      batch = trainer.global_batch(next(train_iter), run.batch_size)
      state, step_metrics = trainer.train_step(state, batch, trainer.step_key(state, step))
      interval_metrics = (step_metrics if interval_metrics is None
                          else interval_metrics.merge(step_metrics))
      interval_steps += 1
      done = step + 1
      preempted = stop_signal.received is not None
      log_due = done % run.log_every_steps == 0 or done == run.num_train_steps or preempted
      save_due = (done % run.checkpoint_every_steps == 0 or done == run.num_train_steps
                  or preempted)
      if log_due or save_due:  # reads the interval's flags: a host sync only where one happens
        _check_finite(run, interval_metrics, checkpointer)
      checkpointer.save(done, state, train_iter, force=done == run.num_train_steps)
      progress.update(1)
      if log_due:
        values = {f"train/{k}": float(v) for k, v in interval_metrics.compute().items()}
        skipped_total += int(values["train/skipped_updates"])
        elapsed = time.perf_counter() - interval_start
        train_time += elapsed
        values["train/steps_per_s"] = interval_steps / elapsed
        values["train/tokens_per_s"] = interval_steps * tokens_per_step / elapsed
        if "train/peak_flops" in summary:
          values["train/mfu"] = (values["train/tokens_per_s"] * summary["train/flops_per_token"]
                                 / summary["train/peak_flops"])
        writer.write_scalars(done, values)
        progress.set_postfix(loss=f"{values['train/loss']:.3f}",
                             tok_s=f"{values['train/tokens_per_s']:.0f}")
        results.update(values)
        interval_metrics, interval_steps = None, 0
        interval_start = time.perf_counter()
      if preempted:
        checkpointer.save_now(done, state, train_iter)
        logging.warning("Received signal %d: wrote the checkpoint of step %d and stopped",
                        stop_signal.received, done)
        results["train/preempted_at_step"] = float(done)
        results["train/stop_signal"] = float(stop_signal.received)
        break
      if eval_batches and (done % run.eval_every_steps == 0 or done == run.num_train_steps):
        eval_start = time.perf_counter()
        eval_values = evaluate(trainer, state.params, eval_batches, run.seed)
        eval_values["eval/unigram_entropy"] = summary["eval/unigram_entropy"]
        eval_values["eval/time_s"] = time.perf_counter() - eval_start
        writer.write_scalars(done, eval_values)
        results.update(eval_values)
        interval_start += eval_values["eval/time_s"]  # keep throughput about training alone
  results["train/skipped_updates_total"] = float(skipped_total)
  progress.close()
  results["train/time_s"] = train_time
  return results

"""Run directories: orbax checkpoints, run metadata, and loading a trained model for inference.

Layout of a workdir:
  run.json          format version, the run's identity (what a resumed run must match), the
                    ModelConfig (`ModelConfig.to_dict()`), the full training config and the
                    tokenizer's kind ('sentencepiece' when absent: runs written before it existed)
  tokenizer.model   kind 'sentencepiece': our SentencePiece tokenizer (`Tokenizer.save`)
  xlnet_tokenizer/  kind 'xlnet' (a run fine-tuned from a Hugging Face XLNet directory): XLNet's
                    tokenizer files as transformers wrote them (`XLNetTokenizer.save`)
  checkpoints/<step>/
    params/         the model parameters (float32 master weights)
    train/          {'step', 'rng', 'opt_state'}
    data/           the grain iterator state, one JSON file per process
                    (`process_<index>-of-<count>.json`): a position in that process's data shard
  metrics.jsonl     one JSON object per logged step (written by train_lib)
  tensorboard/      the same scalars as TensorBoard event files (`tensorboard --logdir`)

`load_for_inference(workdir)` needs nothing but this directory.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import grain.python as grain_python
import jax
import numpy as np
from absl import logging
import orbax.checkpoint as ocp
from etils import epath

from asarm_jax.data.tokenizer import Tokenizer
from asarm_jax.model import ModelConfig, init_params
from asarm_jax.xlnet_tokenizer import XLNetTokenizer

RUN_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.model"
XLNET_TOKENIZER_DIR = "xlnet_tokenizer"
SENTENCEPIECE, XLNET = "sentencepiece", "xlnet"  # run.json's "tokenizer": the tokenizer's kind
CHECKPOINT_DIR = "checkpoints"
BAD_CHECKPOINT_DIR = "bad_checkpoints"  # unreadable checkpoints are moved here, out of the way
_DATA_STATE_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")  # grain's name for a process's state
FORMAT_VERSION = 1


def _canonical(value: Any) -> Any:
  """JSON round trip: tuples become lists, so stored and fresh values compare equal."""
  return json.loads(json.dumps(value, sort_keys=True))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def read_run(workdir: str | epath.PathLike) -> dict[str, Any]:
  """The run metadata of `workdir`.

  Raises:
    FileNotFoundError: `workdir` holds no run.json (not a training run directory).
  """
  path = epath.Path(workdir) / RUN_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir} is not a training run directory")
  return json.loads(path.read_text())


def check_compatible(workdir: str | epath.PathLike, identity: dict[str, Any]):
  """Raises ValueError if `workdir` holds a run whose identity differs from `identity`.

  A workdir without run.json is compatible with anything (a fresh run).
  """
  path = epath.Path(workdir) / RUN_FILE
  if not path.exists():
    return
  stored = _flatten(_canonical(read_run(workdir).get("identity", {})))
  fresh = _flatten(_canonical(identity))
  differences = [f"{key}: {stored.get(key, '<absent>')!r} in the workdir, "
                 f"{fresh.get(key, '<absent>')!r} now"
                 for key in sorted(set(stored) | set(fresh)) if stored.get(key) != fresh.get(key)]
  if differences:
    raise ValueError(f"{workdir} holds a run with an incompatible config; use another workdir or "
                     "the original settings. Differences:\n  " + "\n  ".join(differences))


def write_run(workdir: str | epath.PathLike, *, identity: dict[str, Any], model_cfg: ModelConfig,
              config: dict[str, Any], tokenizer: Tokenizer | XLNetTokenizer):
  """Writes run.json and the tokenizer: tokenizer.model, or xlnet_tokenizer/ for XLNet's (call
  from one process only)."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if isinstance(tokenizer, XLNetTokenizer):
    kind = XLNET
    tokenizer.save(workdir / XLNET_TOKENIZER_DIR)
  else:
    kind = SENTENCEPIECE
    tokenizer.save(workdir / TOKENIZER_FILE)
  record = {"format": FORMAT_VERSION, "identity": _canonical(identity),
            "model": model_cfg.to_dict(), "config": _canonical(config), "tokenizer": kind}
  (workdir / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))


def load_tokenizer(workdir: str | epath.PathLike) -> Tokenizer | XLNetTokenizer:
  """The tokenizer of the run in `workdir`, of the kind its run.json names.

  Raises:
    FileNotFoundError: no run.json, or no tokenizer file of that kind (named).
    ValueError: an unknown tokenizer kind in run.json, or a tokenizer file that does not read.
  """
  workdir = epath.Path(workdir)
  kind = read_run(workdir).get("tokenizer", SENTENCEPIECE)
  if kind == SENTENCEPIECE:
    return Tokenizer.load(workdir / TOKENIZER_FILE)
  if kind == XLNET:
    return XLNetTokenizer.from_directory(workdir / XLNET_TOKENIZER_DIR)
  raise ValueError(f"{workdir / RUN_FILE} names the tokenizer kind {kind!r}; expected "
                   f"{SENTENCEPIECE!r} or {XLNET!r}")


def _absolute(path: epath.Path) -> epath.Path:
  """Orbax needs absolute paths; remote paths (gs://...) already are."""
  return path if "://" in str(path) else epath.Path(os.path.abspath(path))


def latest_step(workdir: str | epath.PathLike) -> int | None:
  """The newest complete checkpoint step of the run in `workdir`; None if it has none."""
  if not (epath.Path(workdir) / CHECKPOINT_DIR).is_dir():
    return None
  checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
  try:
    return checkpointer.latest_step
  finally:
    checkpointer.close()


class Checkpointer:
  """Saves and restores params + optimizer state + step + rng + data iterator state.

  Wraps an orbax CheckpointManager (async saves every `save_every_steps`, keeping the last `keep`).
  The state is any flax struct with fields step, params, opt_state and rng.
  """

  def __init__(self, workdir: str | epath.PathLike, *, save_every_steps: int = 1000,
               keep: int = 3, async_save: bool = True, read_only: bool = False):
    self.directory = _absolute(epath.Path(workdir)) / CHECKPOINT_DIR
    self._read_only = read_only
    self._save_every_steps = save_every_steps
    self._last_saved_step: int | None = None
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every_steps, max_to_keep=keep,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("params", "train", "data"))

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False) -> bool:
    """Saves at `step` when it is due (or `force`); returns whether a save started.

    The data iterator's state is captured during this call, before training continues.
    """
    if not force and step % self._save_every_steps:
      return False
    items = {"params": ocp.args.StandardSave(state.params),
             "train": ocp.args.StandardSave({"step": state.step, "rng": state.rng,
                                             "opt_state": state.opt_state})}
    if data_iterator is not None:
      items["data"] = grain_python.PyGrainCheckpointSave(data_iterator)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    if saved:
      self._last_saved_step = step
    return saved

  def save_now(self, step: int, state: Any, data_iterator: Any = None):
    """Saves at `step` (unless this Checkpointer already saved it) and waits until it is written:
    on return the checkpoint is complete on disk (e.g. before exiting on SIGTERM)."""
    if self._last_saved_step != step:
      self.save(step, state, data_iterator, force=True)
    self.wait()

  def restore_latest_good(self, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores the newest checkpoint that reads back whole and finite.

    A checkpoint that fails to restore (missing or garbled files) or holds non-finite values is
    logged as a warning naming its step and the next older one is tried; once one restores, the
    unusable newer ones are moved to `<workdir>/bad_checkpoints/` (so that their steps can be saved
    again). If none restores (e.g. a config that no longer matches), nothing is moved.

    Raises:
      FileNotFoundError: there is no checkpoint.
      RuntimeError: no checkpoint could be restored (each step's error named).
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint found in {self.directory}")
    errors = []
    for step in steps:
      try:
        state = self.restore(abstract_state, data_iterator, step=step)
        bad = [jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_leaves_with_path((state.params, state.opt_state))
               if np.issubdtype(leaf.dtype, np.floating) and not bool(jax.numpy.isfinite(
                   leaf).all())]
        if bad:
          raise ValueError(f"non-finite values in {bad[:5]}")
      except Exception as error:  # pylint: disable=broad-except
        errors.append((step, f"{type(error).__name__}: {error}"))
        logging.warning("Checkpoint of step %d in %s is unusable (%s: %s); falling back to the "
                        "previous one", step, self.directory, type(error).__name__, error)
        continue
      for bad_step, _ in errors:  # only once an older one restored: never all of them
        self._set_aside(bad_step)
      return state
    raise RuntimeError(f"no usable checkpoint in {self.directory}:\n  " + "\n  ".join(
        f"step {step}: {error}" for step, error in errors))

  def _set_aside(self, step: int):
    """Moves the checkpoint of `step` out of the checkpoint directory (process 0, writable)."""
    if self._read_only or jax.process_index() != 0:
      return
    target = self.directory.parent / BAD_CHECKPOINT_DIR / f"{step}.{int(time.time())}"
    target.parent.mkdir(parents=True, exist_ok=True)
    (self.directory / str(step)).rename(target)
    logging.warning("Moved the unusable checkpoint of step %d to %s", step, target)
    self._manager.reload()

  def restore(self, abstract_state: Any, data_iterator: Any = None,
              step: int | None = None) -> Any:
    """Restores the state (and the data iterator, in place) saved at `step` (default: latest).

    The data iterator states are positions in per-process data shards (documents are sharded by
    process before shuffling and packing), so those of another process count have no counterpart
    in this run's streams: then `data_iterator` is left where it is (a fresh one: the start of
    this run's stream, where a fresh run with this process count begins) and a warning names the
    step and both process counts.

    Args:
      abstract_state: a state of jax.ShapeDtypeStruct leaves carrying the target shardings.
      data_iterator: the grain iterator to move to the saved position, or None.
      step: which checkpoint; None for the latest.

    Raises:
      FileNotFoundError: there is no checkpoint (at `step`).
    """
    step = self._resolve_step(step)
    items = {"params": ocp.args.StandardRestore(abstract_state.params),
             "train": ocp.args.StandardRestore({"step": abstract_state.step,
                                                "rng": abstract_state.rng,
                                                "opt_state": abstract_state.opt_state})}
    saved_count = self._data_process_count(step)
    other_count = saved_count is not None and saved_count != jax.process_count()
    if data_iterator is not None and not other_count:
      items["data"] = grain_python.PyGrainCheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if data_iterator is not None and other_count:
      logging.warning(
          "The checkpoint of step %d in %s was written by %d processes and this run has %d: its "
          "data iterator positions are in other data shards, so the model, optimizer state, step "
          "and rng are restored and the data iterator starts at the beginning of this run's "
          "stream (as a fresh run with %d processes would)", step, self.directory, saved_count,
          jax.process_count(), jax.process_count())
    train = restored["train"]
    return abstract_state.replace(params=restored["params"], step=train["step"],
                                  rng=train["rng"], opt_state=train["opt_state"])

  def _data_process_count(self, step: int) -> int | None:
    """How many processes saved the data iterator states of `step`; None if it holds none (or
    states that disagree: a damaged checkpoint, for the restore to reject)."""
    data = self.directory / str(step) / "data"
    names = [path.name for path in data.iterdir()] if data.exists() else []
    counts = {int(match[2]) for match in map(_DATA_STATE_FILE.fullmatch, names) if match}
    return counts.pop() if len(counts) == 1 else None

  def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
    """Restores only the parameters saved at `step` (default: latest)."""
    step = self._resolve_step(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"]

  def _resolve_step(self, step: int | None) -> int:
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint found in {self.directory}")
    if step is None:
      return max(steps)
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"available steps: {sorted(steps)}")
    return step

  def wait(self):
    """Blocks until pending async saves are written."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def load_for_inference(workdir: str | epath.PathLike, step: int | None = None
                       ) -> tuple[ModelConfig, Any, Tokenizer | XLNetTokenizer]:
  """Loads a trained model from a run directory: (ModelConfig, params, Tokenizer).

  Args:
    workdir: a directory written by `train_lib.train_and_evaluate`.
    step: which checkpoint; None for the latest.

  Returns:
    The model config, its float32 parameters (on the default device) and the tokenizer (ours, or
    XLNet's for a run fine-tuned from a Hugging Face XLNet directory: `load_tokenizer`).

  Raises:
    FileNotFoundError: no run.json, no tokenizer or no checkpoint in `workdir` (named).
  """
  workdir = epath.Path(workdir)
  run = read_run(workdir)
  model_cfg = ModelConfig.from_dict(run["model"])
  tokenizer = load_tokenizer(workdir)
  if latest_step(workdir) is None:
    raise FileNotFoundError(f"no checkpoint found in {workdir / CHECKPOINT_DIR}")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
  try:
    params = checkpointer.restore_params(abstract, step)
  finally:
    checkpointer.close()
  return model_cfg, params, tokenizer

"""One loader for both kinds of model directory: `asarm_jax.load(path)`.

    model = asarm_jax.load("runs/default")        # one of our training run directories
    model = asarm_jax.load("xlnet-base-cased/")   # a transformers XLNet save_pretrained directory
    asarm_jax.infill(model.params, model.config, model.tokenizer, text, jax.random.key(0))

A directory holding run.json is a training run (`checkpoint.load_for_inference`: our SentencePiece
tokenizer, or XLNet's for a run fine-tuned from an HF XLNet directory); else one holding
config.json is a Hugging Face XLNet directory: config.json, the weights
(`convert_hf.load_hf_xlnet`) and XLNet's tokenizer (`xlnet_tokenizer.XLNetTokenizer`, from
tokenizer.json or spiece.model), or ours where the directory is the export of one of our runs
(asarm_tokenizer.model: `hf_export`). Loading only reads: nothing is written to the directory.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from etils import epath

from asarm_jax import checkpoint
from asarm_jax import convert_hf
from asarm_jax.data.tokenizer import Tokenizer
from asarm_jax.model import ModelConfig
from asarm_jax.xlnet_tokenizer import XLNetTokenizer

RUN, HF_XLNET = "run", "hf_xlnet"
HF_CONFIG = "config.json"
# Our SentencePiece tokenizer in an HF directory written by `hf_export.export_run` (a name that
# transformers does not read: its XLNet tokenizer cannot give our ids).
ASARM_TOKENIZER = "asarm_tokenizer.model"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model ready for inference and the tokenizer its ids belong to."""
  config: ModelConfig
  params: Any                            # float32 parameter tree, as `init_params`
  tokenizer: Tokenizer | XLNetTokenizer  # encode / decode / vocab_size / pad_id / eos_id / mask_id
  kind: str                              # RUN or HF_XLNET

  @property
  def mask_id(self) -> int:
    return self.config.mask_token_id

  @property
  def max_len(self) -> int:
    """The longest sequence the model takes."""
    return self.config.max_len


def load(path: str | epath.PathLike, *, step: int | None = None) -> LoadedModel:
  """Loads a training run directory or a Hugging Face XLNet directory (see the module docstring).

  Args:
    path: the directory.
    step: a run's checkpoint step (default latest); only for training run directories.

  Raises:
    FileNotFoundError: `path` is missing, not a directory, neither kind of directory, or lacks
      its weights, checkpoint or tokenizer (named).
    ValueError: a config.json that is not XLNet's (or that we cannot reproduce), a tokenizer
      whose size or mask id does not match the model, or a `step` for an HF directory.
  """
  directory = epath.Path(path)
  if not directory.exists():
    raise FileNotFoundError(f"{path} does not exist")
  if not directory.is_dir():
    raise FileNotFoundError(f"{path} is a file, not a model directory")
  found = kind(directory)
  if found == RUN:
    return LoadedModel(*checkpoint.load_for_inference(directory, step), kind=RUN)
  if found == HF_XLNET:
    if step is not None:
      raise ValueError(f"step={step}: {path} is a Hugging Face XLNet directory, which has no "
                       "checkpoint steps")
    return _load_hf_xlnet(pathlib.Path(path))
  raise FileNotFoundError(f"{path} is neither a training run directory ({checkpoint.RUN_FILE} not "
                          f"found) nor a Hugging Face XLNet directory ({HF_CONFIG} not found)")


def kind(directory: str | epath.PathLike) -> str | None:
  """RUN if `directory` holds run.json, else HF_XLNET if it holds config.json, else None."""
  directory = epath.Path(directory)
  if (directory / checkpoint.RUN_FILE).exists():
    return RUN
  return HF_XLNET if (directory / HF_CONFIG).exists() else None


def read_hf_xlnet_config(path: str | pathlib.Path, *, max_len: int | None = None
                         ) -> tuple[ModelConfig, Tokenizer | XLNetTokenizer]:
  """The ModelConfig and tokenizer of an HF XLNet directory, checked, without reading the weights.

  Checks what `load` checks (an XLNet config.json we can reproduce, a tokenizer of the
  embedding's size and mask id, weight files present); `max_len` as in
  `convert_hf.load_hf_xlnet`.

  Raises:
    FileNotFoundError / ValueError: as `load`.
  """
  directory = pathlib.Path(path)
  config_path = directory / HF_CONFIG
  try:
    hf_config = json.loads(config_path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f"{config_path} is not valid JSON: {error}") from None
  model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
  if model_type != "xlnet":
    raise ValueError(f"{config_path} has model_type {model_type!r}, not 'xlnet': only XLNet "
                     "checkpoints can be loaded")
  ours = directory / ASARM_TOKENIZER
  tokenizer = Tokenizer.load(ours) if ours.is_file() else XLNetTokenizer.from_directory(directory)
  vocab_size = hf_config.get("vocab_size")
  if vocab_size != tokenizer.vocab_size:
    raise ValueError(f"the tokenizer in {directory} has {tokenizer.vocab_size} ids but the model's "
                     f"embedding has vocab_size {vocab_size} ({config_path}): they do not belong "
                     "together")
  mask_id = hf_config.get("mask_token_id")
  if mask_id is not None and mask_id != tokenizer.mask_id:
    raise ValueError(f"{config_path} has mask_token_id {mask_id} but the tokenizer's <mask> is id "
                     f"{tokenizer.mask_id}")
  convert_hf.find_directory_files(directory)  # the weights are there
  return convert_hf.config_from_hf(hf_config, tokenizer.mask_id, max_len), tokenizer


def _load_hf_xlnet(directory: pathlib.Path) -> LoadedModel:
  """An HF XLNet directory, checked (config, tokenizer, sizes) before the weights are read."""
  _, tokenizer = read_hf_xlnet_config(directory)
  cfg, params = convert_hf.load_hf_xlnet(directory, mask_token_id=tokenizer.mask_id)
  return LoadedModel(cfg, params, tokenizer, kind=HF_XLNET)

"""A training run as a Hugging Face XLNet directory: `export_run(workdir, out_dir)`.

The weights are written by `convert_hf.export_hf_xlnet` (config.json + model.safetensors, loaded by
transformers' `XLNetLMHeadModel` with the same logits). The tokenizer depends on the run's kind:

  XLNet's    (a run fine-tuned from a Hugging Face XLNet directory) its files are copied
             (tokenizer.json or spiece.model, and tokenizer_config.json): transformers'
             `AutoTokenizer` reads them and gives the run's ids.
  ours       (SentencePiece, whitespace kept exactly, byte fallback) cannot be expressed as
             transformers' XLNet tokenizer, which folds whitespace runs and newlines, normalises
             with NFKD and strips accents, and maps unknown characters to <unk>: its ids would
             differ from the run's. So the export is weights + our tokenizer, written as
             `asarm_tokenizer.model` (a name transformers does not read: `AutoTokenizer` finds no
             tokenizer there rather than a wrong one). Tokenize with
             `asarm_jax.data.Tokenizer.load(out_dir / "asarm_tokenizer.model")`; `asarm_jax.load`
             reads the directory whole.

`asarm_jax.load(out_dir)` reads either export back with the run's config and parameters.
"""
from __future__ import annotations

import pathlib

from etils import epath

from asarm_jax import convert_hf
from asarm_jax import loading
from asarm_jax.xlnet_tokenizer import XLNetTokenizer


def export_run(workdir: str | epath.PathLike, out_dir: str | pathlib.Path, *,
               step: int | None = None) -> loading.LoadedModel:
  """Writes the run in `workdir` (checkpoint `step`, default latest) as an HF XLNet directory.

  Args:
    workdir: one of our training run directories.
    out_dir: the directory to write; it must not exist or be empty.
    step: the checkpoint step.

  Returns:
    The exported model as loaded from `workdir`.

  Raises:
    FileNotFoundError: `workdir` is missing or not a training run directory, or lacks the step.
    FileExistsError: `out_dir` is a file or a non-empty directory (nothing is overwritten).
    ValueError: a model XLNet cannot express (n_heads * d_head != d_model).
  """
  out = pathlib.Path(out_dir)
  if out.is_file() or (out.is_dir() and any(out.iterdir())):
    raise FileExistsError(f"{out} exists and is not an empty directory: the export writes a new "
                          "directory; choose another --out or remove it")
  if not epath.Path(workdir).is_dir():
    raise FileNotFoundError(f"{workdir} does not exist or is not a directory")
  if loading.kind(workdir) != loading.RUN:
    raise FileNotFoundError(f"{workdir} is not a training run directory (no run.json): only our "
                            "runs are exported (a Hugging Face directory already is one)")
  model = loading.load(workdir, step=step)
  convert_hf.export_hf_xlnet(model.config, model.params, out)
  if isinstance(model.tokenizer, XLNetTokenizer):
    model.tokenizer.save(out)
  else:
    model.tokenizer.save(out / loading.ASARM_TOKENIZER)
  return model

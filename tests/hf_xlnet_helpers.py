"""Builders shared by the Hugging Face XLNet tests: a tiny XLNet checkpoint made here (nothing is
downloaded): a SentencePiece Unigram model trained on a few KB of text with XLNet's special ids,
read by transformers' own XLNetTokenizer and saved with `save_pretrained`, and a tiny random
XLNetLMHeadModel of that vocabulary."""
import hashlib
import io
import pathlib
import string
import textwrap
import types

import numpy as np
import sentencepiece as spm
import transformers

from asarm_jax import checkpoint
from _hf_testlib import random_hf_model

# XLNet's special ids: <unk>=0, <s>=1, </s>=2, then these control symbols from id 3 on.
XLNET_CONTROLS = ["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]


def training_text() -> str:
  """A few KB of prose and code, accents and digits with commas included."""
  prose = ("Café naïve résumé: the façade of Ångström's house cost 1,000 or 2,500,000 crowns. "
           "``Quoted'' words and plain ones, over and over.\n") * 4
  return prose + pathlib.Path(textwrap.__file__).read_text()[:4000] + pathlib.Path(
      string.__file__).read_text()[:2000]


def train_spiece() -> bytes:
  """A Unigram SentencePiece model with XLNet's special ids (see XLNET_CONTROLS)."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(training_text().splitlines()), model_writer=model,
      model_type="unigram", vocab_size=300, hard_vocab_limit=False, unk_id=0, bos_id=1,
      eos_id=2, pad_id=-1, control_symbols=XLNET_CONTROLS, num_threads=1, minloglevel=2)
  return model.getvalue()


def snapshot(directory: pathlib.Path) -> dict[str, str]:
  """Every path under `directory` -> 'dir' or the sha1 of the file."""
  return {path.relative_to(directory).as_posix():
          "dir" if path.is_dir() else hashlib.sha1(path.read_bytes()).hexdigest()
          for path in sorted(directory.rglob("*"))}


def build_hf_xlnet(root: pathlib.Path) -> types.SimpleNamespace:
  """Two HF XLNet directories of one model under `root`: 'spiece' (config.json,
  model.safetensors, spiece.model: the older layout) and 'json' (what transformers 5's
  save_pretrained writes: tokenizer.json and tokenizer_config.json).

  Returns:
    root, model (the XLNetLMHeadModel), dirs {layout: directory} and reference {layout:
    transformers' tokenizer of that directory}.
  """
  old = root / "spiece"
  old.mkdir()
  (old / "spiece.model").write_bytes(train_spiece())
  # transformers 5's XLNetTokenizer(vocab_file=...) ignores the file; from_pretrained reads it.
  old_tokenizer = transformers.XLNetTokenizer.from_pretrained(old)
  model = random_hf_model(seed=0, vocab_size=len(old_tokenizer))
  model.save_pretrained(old)
  new = root / "json"
  model.save_pretrained(new)
  old_tokenizer.save_pretrained(new)
  assert (new / "tokenizer.json").is_file() and not (new / "spiece.model").exists()
  return types.SimpleNamespace(
      root=root, model=model, dirs={"spiece": old, "json": new},
      reference={"spiece": old_tokenizer,
                 "json": transformers.AutoTokenizer.from_pretrained(new)})


def write_run_dir(directory: pathlib.Path, cfg, params, tokenizer) -> None:
  """A training run directory by hand: run.json, the tokenizer and a checkpoint of step 1 holding
  `params` (the optimizer state is a stand-in)."""
  checkpoint.write_run(directory, identity={}, model_cfg=cfg, config={}, tokenizer=tokenizer)
  saver = checkpoint.Checkpointer(directory, async_save=False)
  saver.save(1, types.SimpleNamespace(params=params, step=1, rng=np.zeros(2, np.uint32),
                                      opt_state={"count": np.zeros((), np.int32)}), force=True)
  saver.close()

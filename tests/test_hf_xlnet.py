"""Hugging Face XLNet directories: XLNet's tokenizer, whose ids and decoding equal transformers',
read from both directory layouts (spiece.model / tokenizer.json).

The checkpoint is built here (nothing is downloaded): a SentencePiece Unigram model trained on a
few KB of text with XLNet's special ids, read by transformers' own XLNetTokenizer and saved with
`save_pretrained`, and a tiny random XLNetLMHeadModel of that vocabulary.
"""
import io
import pathlib
import re
import string
import textwrap
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import sentencepiece as spm  # noqa: E402

from asarm_jax.xlnet_tokenizer import XLNetTokenizer  # noqa: E402
from test_convert_hf import _hf_model  # noqa: E402

# XLNet's special ids: <unk>=0, <s>=1, </s>=2, then these control symbols from id 3 on.
XLNET_CONTROLS = ["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
LAYOUTS = ("spiece", "json")
TRICKY = [
    "", " ", "\n", "Hello world.", "Café naïve résumé, Ångström über façade",
    "two  spaces,   three", "line one\nline two\n\n", "tab\tseparated\tvalues",
    "  leading and trailing  ", "def add(a, b):\n    return a + b\n",
    "x = {'k': [1, 2]}  # comment", "the literal <mask> token", "<mask>", "x<mask>y",
    "<s>specials</s> <cls> <sep> <pad> <eod> <eop> <unk>", "1,000 and 2,500,000 and 3,5",
    "``quoted'' text", "ﬁ ½ Ⅳ \u3000 wide\u00a0space", "emoji 🙂 and 漢字", "UPPER lower MiXeD",
]


def _training_text() -> str:
  """A few KB of prose and code, accents and digits with commas included."""
  prose = ("Café naïve résumé: the façade of Ångström's house cost 1,000 or 2,500,000 crowns. "
           "``Quoted'' words and plain ones, over and over.\n") * 4
  return prose + pathlib.Path(textwrap.__file__).read_text()[:4000] + pathlib.Path(
      string.__file__).read_text()[:2000]


def _train_spiece() -> bytes:
  """A Unigram SentencePiece model with XLNet's special ids (see XLNET_CONTROLS)."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_training_text().splitlines()), model_writer=model,
      model_type="unigram", vocab_size=300, hard_vocab_limit=False, unk_id=0, bos_id=1,
      eos_id=2, pad_id=-1, control_symbols=XLNET_CONTROLS, num_threads=1, minloglevel=2)
  return model.getvalue()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  """Two HF XLNet directories of one model: 'spiece' (config.json, model.safetensors,
  spiece.model: the older layout) and 'json' (what transformers 5's save_pretrained writes:
  tokenizer.json and tokenizer_config.json), with transformers' tokenizer of each."""
  root = tmp_path_factory.mktemp("hf_xlnet")
  old = root / "spiece"
  old.mkdir()
  (old / "spiece.model").write_bytes(_train_spiece())
  # transformers 5's XLNetTokenizer(vocab_file=...) ignores the file; from_pretrained reads it.
  old_tokenizer = transformers.XLNetTokenizer.from_pretrained(old)
  model = _hf_model(seed=0, vocab_size=len(old_tokenizer))
  model.save_pretrained(old)
  new = root / "json"
  model.save_pretrained(new)
  old_tokenizer.save_pretrained(new)
  assert (new / "tokenizer.json").is_file() and not (new / "spiece.model").exists()
  return types.SimpleNamespace(
      root=root, model=model, dirs={"spiece": old, "json": new},
      reference={"spiece": old_tokenizer,
                 "json": transformers.AutoTokenizer.from_pretrained(new)})


# --------------------------------------------------------------------------------------------------
# The tokenizer.


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ids_and_decoding_match_transformers(layout, hf):
  ours, theirs = XLNetTokenizer.from_directory(hf.dirs[layout]), hf.reference[layout]
  assert (ours.vocab_size, ours.mask_id, ours.pad_id) == (len(theirs), 6, 5)
  assert ours.eos_id == 7  # <eod>, XLNet's document separator
  for text in TRICKY:
    ids = ours.encode(text)
    assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    holes = [i for i in ids if i == ours.mask_id or i not in theirs.all_special_ids]
    assert ours.decode(ids, mask_text="<mask>") == theirs.decode(holes), text
  rng = np.random.default_rng(0)
  for _ in range(20):
    ids = rng.integers(0, ours.vocab_size, rng.integers(1, 12)).tolist()
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), ids


def test_encode_has_no_sep_cls_suffix(hf):
  ours, theirs = XLNetTokenizer.from_directory(hf.dirs["json"]), hf.reference["json"]
  with_specials = theirs("Hello world.")["input_ids"]
  assert with_specials[-2:] == [4, 3]  # transformers' <sep> <cls>
  assert ours.encode("Hello world.") == with_specials[:-2]


@pytest.mark.parametrize("text,reason", [
    ("Hello world, 1,000 times.", None),
    ("", None),
    ("two  spaces", r"a run of 2 spaces at character 3"),
    ("line\nbreak", r"a newline at character 4"),
    ("a\tb", r"a tab at character 1"),
    (" lead", r"a space at character 0 \(leading\)"),
    ("trail ", r"a space at character 5 \(trailing\)"),
    ("Café", r"'é' \(U\+00E9\) at character 3 is normalised to 'e'"),
    ("``q''", r"'``' at character 0 is normalised"),
    ("a <mask> b", r"special token text '<mask>' at character 2"),
    ("emoji 🙂", r"'🙂' at character 6 is not in the vocabulary"),
])
def test_lossy_reason_names_the_loss(text, reason, hf):
  tokenizer = XLNetTokenizer.from_directory(hf.dirs["json"])
  found = tokenizer.lossy_reason(text)
  if reason is None:
    assert found is None
  else:
    assert found is not None and re.search(reason, found), found


def test_lossy_reason_is_none_exactly_for_round_trips(hf):
  tokenizer = XLNetTokenizer.from_directory(hf.dirs["spiece"])
  for text in TRICKY:
    round_trips = tokenizer.decode(tokenizer.encode(text)) == text
    assert (tokenizer.lossy_reason(text) is None) == round_trips, text

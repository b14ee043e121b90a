"""Hugging Face XLNet directories end to end: XLNet's tokenizer (ids and decoding equal to
transformers'), `asarm_jax.load` of both directory layouts (spiece.model / tokenizer.json) and of a
run directory, logit parity, one clear error per bad directory with nothing written, infilling
(lossy texts refused unless allowed) and sample.py on an HF directory.

The checkpoint is built by `hf_xlnet_helpers.build_hf_xlnet` (nothing is downloaded), once per
session (the `hf` fixture of conftest.py).
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import asarm_jax  # noqa: E402
from asarm_jax import infilling  # noqa: E402
from asarm_jax.data import train_tokenizer  # noqa: E402
from asarm_jax.model import ModelConfig  # noqa: E402
from asarm_jax.xlnet_tokenizer import XLNetTokenizer  # noqa: E402
import hf_xlnet_helpers  # noqa: E402
from _hf_testlib import TOLERANCE, max_logit_diff, random_params  # noqa: E402

LAYOUTS = ("spiece", "json")
TRICKY = [
    "", " ", "\n", "Hello world.", "Café naïve résumé, Ångström über façade",
    "two  spaces,   three", "line one\nline two\n\n", "tab\tseparated\tvalues",
    "  leading and trailing  ", "def add(a, b):\n    return a + b\n",
    "x = {'k': [1, 2]}  # comment", "the literal <mask> token", "<mask>", "x<mask>y",
    "<s>specials</s> <cls> <sep> <pad> <eod> <eop> <unk>", "1,000 and 2,500,000 and 3,5",
    "``quoted'' text", "ﬁ ½ Ⅳ \u3000 wide\u00a0space", "emoji 🙂 and 漢字", "UPPER lower MiXeD",
]


@pytest.fixture(scope="module")
def loaded(hf):
  return {layout: asarm_jax.load(hf.dirs[layout]) for layout in LAYOUTS}


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
  with pytest.raises(ValueError, match=r"Token ids out of range \[0, \d+\): \[\d+\]"):
    ours.decode([ours.vocab_size])
  rng = np.random.default_rng(0)
  for _ in range(20):
    ids = rng.integers(0, ours.vocab_size, rng.integers(1, 12)).tolist()
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), ids


def test_do_lower_case_matches_transformers(hf, tmp_path):
  shutil.copytree(hf.dirs["json"], tmp_path / "lower")
  config_path = tmp_path / "lower" / "tokenizer_config.json"
  config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "do_lower_case": True}))
  ours = XLNetTokenizer.from_directory(tmp_path / "lower")
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "lower")
  for text in TRICKY:
    assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
  assert ours.encode("UPPER") == ours.encode("upper")


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


# --------------------------------------------------------------------------------------------------
# The loader.


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_reads_an_hf_directory_and_writes_nothing(layout, hf, loaded):
  before = hf_xlnet_helpers.snapshot(hf.dirs[layout])
  model = asarm_jax.load(hf.dirs[layout])
  assert hf_xlnet_helpers.snapshot(hf.dirs[layout]) == before
  assert model.kind == "hf_xlnet"
  assert isinstance(model.tokenizer, XLNetTokenizer)
  assert model.config.vocab_size == model.tokenizer.vocab_size == len(hf.reference[layout])
  assert (model.mask_id, model.max_len, model.config.n_layers) == (6, 512, 2)
  assert jax.tree.structure(model.params) == jax.tree.structure(loaded["json"].params)


@pytest.mark.parametrize("seed,num_prompt", [(0, 1), (1, 4)])
def test_logits_match_transformers(seed, num_prompt, hf, loaded):
  model = loaded["spiece"]
  assert max_logit_diff(model.config, model.params, hf.model, seed, num_prompt) <= TOLERANCE


def test_load_reads_pytorch_model_bin(hf, loaded, tmp_path):
  directory = tmp_path / "bin"
  shutil.copytree(hf.dirs["json"], directory)
  (directory / "model.safetensors").unlink()
  torch.save(hf.model.state_dict(), directory / "pytorch_model.bin")
  model = asarm_jax.load(directory)
  for ours, theirs in zip(jax.tree.leaves(model.params), jax.tree.leaves(loaded["json"].params)):
    np.testing.assert_array_equal(ours, theirs)


def test_load_reads_a_run_directory(tmp_path):
  tokenizer = train_tokenizer([hf_xlnet_helpers.training_text()], vocab_size=400)
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, d_model=16,
                    n_layers=1, n_heads=2, d_head=8, d_inner=32, max_len=32)
  params = random_params(cfg, seed=0)
  hf_xlnet_helpers.write_run_dir(tmp_path, cfg, params, tokenizer)
  model = asarm_jax.load(tmp_path)
  assert (model.kind, model.config, model.mask_id) == ("run", cfg, tokenizer.mask_id)
  assert model.tokenizer.model_proto == tokenizer.model_proto
  for ours, theirs in zip(jax.tree.leaves(model.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(ours, theirs)


def _edit_config(**changes):
  def edit(directory):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
  return edit


def _delete(name):
  def edit(directory):
    (directory / name).unlink()
  return edit


def _load_after(edit):
  """A row's set-up: edits the directory, then loads it."""
  def setup(directory):
    edit(directory)
    return directory, {}
  return setup


# (name, set-up: a copy of the 'json' directory -> (path, load options), error, message regex)
BAD_DIRECTORIES = [
    ("missing", lambda d: (d / "no_such_dir", {}), FileNotFoundError, r"no_such_dir does not exist"),
    ("a_file", lambda d: (d / "config.json", {}), FileNotFoundError,
     r"config\.json is a file, not a model directory"),
    ("neither_kind", _load_after(_delete("config.json")), FileNotFoundError,
     r"neither a training run directory \(run\.json not found\) nor a Hugging Face XLNet "
     r"directory \(config\.json not found\)"),
    ("not_xlnet", _load_after(_edit_config(model_type="bert")), ValueError,
     r"config\.json has model_type 'bert', not 'xlnet'"),
    ("no_weights", _load_after(_delete("model.safetensors")), FileNotFoundError,
     r"no model\.safetensors or model\.safetensors\.index\.json in .* \(nor pytorch_model\.bin\)"),
    ("no_tokenizer", _load_after(_delete("tokenizer.json")), FileNotFoundError,
     r"no tokenizer in .*: expected tokenizer\.json or spiece\.model"),
    ("vocab_mismatch", _load_after(_edit_config(vocab_size=301)), ValueError,
     r"the tokenizer in .* has \d+ ids but the model's embedding has vocab_size 301"),
    ("mask_mismatch", _load_after(_edit_config(mask_token_id=7)), ValueError,
     r"config\.json has mask_token_id 7 but the tokenizer's <mask> is id 6"),
    ("step_of_hf_dir", lambda d: (d, {"step": 3}), ValueError,
     r"step=3: .* is a Hugging Face XLNet directory, which has no checkpoint steps"),
]


@pytest.mark.parametrize("name,setup,error,pattern", BAD_DIRECTORIES,
                         ids=[row[0] for row in BAD_DIRECTORIES])
def test_bad_directory_gives_one_clear_error(name, setup, error, pattern, hf, tmp_path):
  del name
  directory = tmp_path / "hf"
  shutil.copytree(hf.dirs["json"], directory)
  path, options = setup(directory)
  before = hf_xlnet_helpers.snapshot(tmp_path)
  with pytest.raises(error, match=pattern) as caught:
    asarm_jax.load(path, **options)
  assert "\n" not in str(caught.value)
  assert hf_xlnet_helpers.snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# Infilling and sample.py.

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROSE = "The cat [MASK*3] on the mat."


def test_infill_texts_with_the_xlnet_tokenizer(loaded):
  model = loaded["json"]
  texts = [PROSE, "A [MASK*2] dog and a [MASK] cat."]
  results = infilling.infill_texts(model.params, model.config, model.tokenizer, texts,
                                   jax.random.key(0), method="sequential")
  assert [(len(r.fills), r.num_generated) for r in results] == [(1, 3), (2, 3)]
  assert results[0].text.startswith("The cat ") and results[0].text.endswith(" on the mat.")
  assert results[1].text.startswith("A ") and results[1].text.endswith(" cat.")
  assert " dog and a " in results[1].text


def test_a_fill_after_text_is_decoded_as_a_continuation(hf):
  tokenizer = XLNetTokenizer.from_directory(hf.dirs["json"])
  ids = tokenizer.encode("sat down")
  assert (tokenizer.decode(ids), tokenizer.decode_continuation(ids)) == ("sat down", " sat down")


@pytest.mark.parametrize("text,loss", [
    ("x  = [MASK]", r"a run of 2 spaces at character 1"),
    ("def f():\n    return [MASK*2]\n", r"a newline at character 8"),
])
def test_lossy_text_is_refused_unless_allowed(text, loss, loaded):
  model = loaded["json"]
  args = (model.params, model.config, model.tokenizer, text, jax.random.key(0))
  with pytest.raises(ValueError, match=loss + r".*allow_lossy_tokenization=True"):
    asarm_jax.infill(*args, method="sequential")
  result = asarm_jax.infill(*args, method="sequential", allow_lossy_tokenization=True)
  assert result.text.startswith(text.split("[MASK")[0])


def _sample_py(*flags_: str) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *flags_], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sample_py_fills_a_text_with_an_hf_directory(hf):
  directory = str(hf.dirs["spiece"])
  before = hf_xlnet_helpers.snapshot(hf.dirs["spiece"])
  filled = _sample_py("--workdir", directory, "--text", PROSE, "--method", "sequential", "--json")
  refused = _sample_py("--workdir", directory, "--text", "a\n[MASK]")
  stdout, stderr = filled.communicate(timeout=150)
  assert filled.returncode == 0, stderr[-3000:]
  result = json.loads(stdout.strip().splitlines()[-1])
  assert result["text"].startswith("The cat ") and result["text"].endswith(" on the mat.")
  assert result["num_generated"] == 3
  _, stderr = refused.communicate(timeout=150)
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert refused.returncode == 2 and len(lines) == 1, stderr[-3000:]
  assert re.match(r"error: .*'a\\n' as it is: a newline at character 1 \(trailing\).*"
                  r"allow_lossy_tokenization=True", lines[0]), lines[0]
  assert hf_xlnet_helpers.snapshot(hf.dirs["spiece"]) == before


@pytest.mark.slow
def test_evals_cli_runs_on_an_hf_directory(hf, tmp_path):
  before = hf_xlnet_helpers.snapshot(hf.dirs["json"])
  out = tmp_path / "heldout.json"
  done = subprocess.run(
      [sys.executable, "-m", "asarm_jax.evals", "--workdir", str(hf.dirs["json"]),
       "--task", "heldout_loss", "--num_batches", "1", "--batch_size", "2", "--num_samples", "0",
       "--rates", "0.5", "--method", "oracle", "--out", str(out)],
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"),
      cwd=ROOT, capture_output=True, text=True, timeout=150)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results["workdir"] == str(hf.dirs["json"].resolve()) and results["losses"]
  assert hf_xlnet_helpers.snapshot(hf.dirs["json"]) == before

"""Fine-tuning from a Hugging Face XLNet directory and exporting runs back to transformers.

A few steps of configs/xlnet_base_finetune.py (model section shrunk to the tiny checkpoint of
`hf_xlnet_helpers`) start from the HF weights with XLNet's tokenizer; the run directory loads with
`asarm_jax.load` and infills; a bad init_from is one clear error with nothing written. Export: the
fine-tuned run and a run with our SentencePiece tokenizer become HF directories that
`XLNetLMHeadModel` loads with the same logits (and `AutoTokenizer` with the same ids, for XLNet's
tokenizer), and that `asarm_jax.load` reads back with equal parameters.
"""
import json
import os
import pathlib
import re
import runpy
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import asarm_jax  # noqa: E402
from asarm_jax import checkpoint, hf_export, train_lib  # noqa: E402
from asarm_jax.data import Tokenizer, train_tokenizer  # noqa: E402
from asarm_jax.model import ModelConfig  # noqa: E402
from asarm_jax.xlnet_tokenizer import XLNetTokenizer  # noqa: E402
import hf_xlnet_helpers  # noqa: E402
from _hf_testlib import TOLERANCE, max_logit_diff, random_params  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FINETUNE_CONFIG = ROOT / "configs" / "xlnet_base_finetune.py"
# The tiny checkpoint's architecture (_hf_testlib.random_hf_model).
TINY_MODEL = dict(d_model=32, n_layers=2, n_heads=4, d_head=8, d_inner=64)
TEXTS = ["Hello world.", "Café naïve résumé", "def add(a, b):\n    return a + b\n",
         "two  spaces", "the literal <mask> token", ""]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
           HF_HUB_OFFLINE="1")


def finetune_config(init_from, **model):
  """configs/xlnet_base_finetune.py with `init_from`, the model section updated by `model`, and
  2 steps of 8 x 16 tokens on a few stdlib documents."""
  config = runpy.run_path(str(FINETUNE_CONFIG))["get_config"]()
  config.model.update(max_len=64, dtype="float32", dropout=0.0, **model)
  config.init_from = str(init_from)
  config.data.update(max_documents=20, read_threads=1)
  config.optimizer.warmup_steps = 1
  config.objective.warmup_steps = 1
  config.update(seq_len=16, batch_size=8, grad_accum_steps=1, num_train_steps=2,
                log_every_steps=1, eval_every_steps=1000, num_eval_batches=1, eval_batch_size=8,
                progress_bar=False, measure_peak_flops=False)
  return config


@pytest.fixture(scope="module")
def finetuned(hf, tmp_path_factory):
  """The run directory of 2 fine-tuning steps from the 'json' layout."""
  workdir = tmp_path_factory.mktemp("finetuned") / "run"
  before = hf_xlnet_helpers.snapshot(hf.dirs["json"])
  train_lib.train_and_evaluate(finetune_config(hf.dirs["json"], **TINY_MODEL), str(workdir))
  assert hf_xlnet_helpers.snapshot(hf.dirs["json"]) == before  # init_from is only read
  return workdir


# --------------------------------------------------------------------------------------------------
# Fine-tuning.


@pytest.mark.slow
def test_finetuning_starts_from_the_hf_weights_with_xlnets_tokenizer(hf, finetuned):
  run = json.loads((finetuned / checkpoint.RUN_FILE).read_text())
  assert run["tokenizer"] == checkpoint.XLNET
  assert not (finetuned / checkpoint.TOKENIZER_FILE).exists()  # no tokenizer was trained
  assert checkpoint.latest_step(finetuned) == 2
  model, source = asarm_jax.load(finetuned), asarm_jax.load(hf.dirs["json"])
  assert (model.kind, model.mask_id) == ("run", 6)
  assert isinstance(model.tokenizer, XLNetTokenizer)
  for text in TEXTS:
    assert model.tokenizer.encode(text) == hf.reference["json"](
        text, add_special_tokens=False)["input_ids"], text
  assert model.config == ModelConfig(vocab_size=source.config.vocab_size, mask_token_id=6,
                                     max_len=64, **TINY_MODEL)
  moved = []
  for tuned, start in zip(jax.tree.leaves(model.params), jax.tree.leaves(source.params)):
    np.testing.assert_allclose(tuned, start, atol=1e-3)  # two steps at lr <= 1e-5
    moved.append(not np.array_equal(tuned, start))
  assert any(moved)


@pytest.mark.slow
def test_infill_on_the_finetuned_run(finetuned):
  model = asarm_jax.load(finetuned)
  result = asarm_jax.infill(model.params, model.config, model.tokenizer,
                            "The cat [MASK*3] on the mat.", jax.random.key(0), method="assd")
  assert result.num_generated == 3
  assert result.text.startswith("The cat ") and result.text.endswith(" on the mat.")


def test_a_finetuned_run_resumes_with_its_own_tokenizer(hf, finetuned, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finetuned, workdir)
  config = finetune_config(hf.dirs["json"], **TINY_MODEL)
  summary = train_lib.train_and_evaluate(config, str(workdir))  # finished: evaluates only
  assert "eval/loss" in summary and checkpoint.latest_step(workdir) == 2


def _bert(directory):
  path = directory / "config.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "bert"}))
  return directory


# (name, init_from from a copy of the 'json' directory, model overrides, error, message regex)
BAD_INIT_FROM = [
    ("missing", lambda d: d / "nowhere", TINY_MODEL, FileNotFoundError,
     r"init_from=.*nowhere does not exist or is not a directory"),
    ("neither_kind", lambda d: d.parent, TINY_MODEL, FileNotFoundError,
     r"init_from=.* is not a training run directory \(run\.json not found\) nor a Hugging Face "
     r"XLNet directory \(config\.json not found\)"),
    ("not_xlnet", _bert, TINY_MODEL, ValueError,
     r"init_from=.*: .*config\.json has model_type 'bert', not 'xlnet'"),
    ("architecture", lambda d: d, {}, ValueError,
     r"init_from=.* has a different model: model\.d_head: 8 in its config\.json, 64 here, "
     r"model\.d_inner: 64 in its config\.json, 3072 here, model\.d_model: 32 .*768 here, "
     r"model\.n_heads: 4 .*12 here, model\.n_layers: 2 .*12 here"),
]


@pytest.mark.parametrize("name,source,model,error,pattern", BAD_INIT_FROM,
                         ids=[row[0] for row in BAD_INIT_FROM])
def test_bad_init_from_is_one_clear_error_before_any_work(name, source, model, error, pattern,
                                                          hf, tmp_path):
  del name
  shutil.copytree(hf.dirs["json"], tmp_path / "hf")
  config = finetune_config(source(tmp_path / "hf"), **model)
  before = hf_xlnet_helpers.snapshot(tmp_path)
  with pytest.raises(error, match=pattern) as caught:
    train_lib.train_and_evaluate(config, str(tmp_path / "never"))
  assert "\n" not in str(caught.value)
  assert hf_xlnet_helpers.snapshot(tmp_path) == before  # nothing written


def test_tokenizer_path_with_init_from_is_refused(hf, tmp_path):
  config = finetune_config(hf.dirs["json"], **TINY_MODEL)
  config.data.tokenizer_path = str(tmp_path / "tokenizer.model")
  with pytest.raises(ValueError, match=r"init_from brings its own tokenizer; unset "
                                       r"data\.tokenizer_path"):
    train_lib.train_and_evaluate(config, str(tmp_path / "never"))
  assert not (tmp_path / "never").exists()


def _run(*args: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], env=ENV, cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _one_error_line(process: subprocess.Popen) -> str:
  _, stderr = process.communicate(timeout=150)
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert process.returncode == 2 and len(lines) == 1, stderr[-3000:]
  return lines[0]


# --------------------------------------------------------------------------------------------------
# Export.


def test_export_of_a_finetuned_run_round_trips_through_transformers(finetuned, tmp_path):
  out = tmp_path / "exported"
  model = hf_export.export_run(finetuned, out)
  assert not (out / "asarm_tokenizer.model").exists()
  theirs = transformers.XLNetLMHeadModel.from_pretrained(out).eval()
  for seed, num_prompt in [(0, 1), (1, 4)]:
    assert max_logit_diff(model.config, model.params, theirs, seed, num_prompt) <= TOLERANCE
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  for text in TEXTS:
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == model.tokenizer.encode(text)
  back = asarm_jax.load(out)
  assert (back.kind, back.config) == ("hf_xlnet", model.config)
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(model.params)):
    np.testing.assert_array_equal(a, b)


def test_export_of_a_run_with_our_tokenizer_is_weights_and_our_tokenizer(tmp_path):
  tokenizer = train_tokenizer([hf_xlnet_helpers.training_text()], vocab_size=400)
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, max_len=32,
                    **TINY_MODEL)
  params = random_params(cfg, seed=0)
  hf_xlnet_helpers.write_run_dir(tmp_path / "run", cfg, params, tokenizer)
  out = tmp_path / "exported"
  hf_export.export_run(tmp_path / "run", out)
  assert not any((out / name).exists() for name in ("spiece.model", "tokenizer.json"))
  theirs = transformers.XLNetLMHeadModel.from_pretrained(out).eval()
  assert max_logit_diff(cfg, params, theirs, seed=0, num_prompt=3) <= TOLERANCE
  back = asarm_jax.load(out)
  assert (back.kind, back.config) == ("hf_xlnet", cfg)
  assert isinstance(back.tokenizer, Tokenizer)
  assert back.tokenizer.model_proto == tokenizer.model_proto
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("what", ["file", "non_empty_directory"])
def test_export_never_overwrites(what, finetuned, tmp_path):
  out = tmp_path / "exported"
  if what == "file":
    out.write_text("keep me")
  else:
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
  before = hf_xlnet_helpers.snapshot(tmp_path)
  with pytest.raises(FileExistsError, match=r"exported exists and is not an empty directory"):
    hf_export.export_run(finetuned, out)
  assert hf_xlnet_helpers.snapshot(tmp_path) == before


def test_export_refuses_what_is_not_a_run(hf, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"is not a training run directory \(no run\.json\)"):
    hf_export.export_run(hf.dirs["json"], tmp_path / "out")
  with pytest.raises(FileNotFoundError, match=r"nowhere does not exist"):
    hf_export.export_run(tmp_path / "nowhere", tmp_path / "out")
  assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# The command lines: train.py's one-line error, sample.py and the export CLI on the run.


@pytest.mark.slow
def test_command_lines_on_a_finetuned_run(hf, finetuned, tmp_path):
  out = tmp_path / "exported"
  mismatch = _run("train.py", "--config", str(FINETUNE_CONFIG),
                  f"--config.init_from={hf.dirs['json']}", "--workdir", str(tmp_path / "never"))
  sample = _run("sample.py", "--workdir", str(finetuned), "--text", "The cat [MASK*2] sat.",
                "--json")
  export = _run("-m", "asarm_jax.cli.export", "--workdir", str(finetuned), "--out", str(out))
  line = _one_error_line(mismatch)
  assert re.match(r"error: init_from=.* has a different model: model\.d_head: 8 in its "
                  r"config\.json, 64 here", line), line
  assert not (tmp_path / "never").exists()
  stdout, stderr = sample.communicate(timeout=150)
  assert sample.returncode == 0, stderr[-3000:]
  result = json.loads(stdout.strip().splitlines()[-1])
  assert result["num_generated"] == 2 and result["text"].startswith("The cat ")
  stdout, stderr = export.communicate(timeout=150)
  assert export.returncode == 0, stderr[-3000:]
  assert f"Wrote {out}" in stdout and (out / "tokenizer.json").is_file()
  again = _run("-m", "asarm_jax.cli.export", "--workdir", str(finetuned), "--out", str(out))
  assert re.match(r"error: .*exported exists and is not an empty directory",
                  _one_error_line(again))

"""The Colab notebook runs headless from top to bottom with tiny settings, so it never rots:
training a tiny run, and loading the tests' tiny Hugging Face XLNet directory (MODEL_DIR)."""
import pathlib

import jax
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import asarm_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "asarm_jax_demo.ipynb"

TINY_SETTINGS = """
WORKDIR = {workdir!r}
TRAIN_STEPS = 3
MODEL_OVERRIDES = dict(d_model=32, n_layers=2, n_heads=2, d_head=16, d_inner=64, max_len=64)
CONFIG_OVERRIDES = {{
    "data.vocab_size": 400, "data.tokenizer_max_chars": 300_000, "data.max_documents": 40,
    "data.read_threads": 1, "seq_len": 32, "batch_size": 8, "eval_batch_size": 8,
    "num_eval_batches": 1, "eval_every_steps": 1000, "checkpoint_every_steps": 1000,
    "log_every_steps": 1, "progress_bar": False, "measure_peak_flops": False,
    "optimizer.warmup_steps": 0,
}}
TEXT = "def f(x):\\n    return [MASK*8]\\n"
NUM_SAMPLES = 4
NUM_TRACES = 3
"""
HF_SETTINGS = """
MODEL_DIR = {model_dir!r}
WORKDIR = {workdir!r}
TEXT = "The cat [MASK*4] on the mat.\\nThe dog [MASK*3] in the garden."
ALLOW_LOSSY_TOKENIZATION = True  # the newline
NUM_SAMPLES = 2
NUM_TRACES = 2
"""


def _settings_index(notebook) -> int:
  tagged = [i for i, cell in enumerate(notebook.cells)
            if "parameters" in cell.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  return tagged[0]


def test_notebook_structure():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  settings = notebook.cells[_settings_index(notebook)].source
  for name in ("WORKDIR", "MODEL_DIR", "TRAIN_STEPS", "DRAFT_LEN", "NUM_SAMPLES", "TEXT",
               "ALLOW_LOSSY_TOKENIZATION"):
    assert f"{name} =" in settings
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
      "commit the notebook without outputs")


def _execute(settings: str) -> tuple[str, str, int]:
  """Runs the notebook with `settings` inserted after its settings cell; fails on any error.

  Returns:
    (its printed text, its HTML, the number of images it showed).
  """
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  notebook.cells.insert(_settings_index(notebook) + 1, nbformat.v4.new_code_cell(settings))
  client = NotebookClient(notebook, timeout=240, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT)}})
  client.execute()
  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.get("outputs", [])]
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors
  text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  html = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs
                   if o.output_type == "display_data")
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  return text, html, len(images)


@pytest.mark.slow
def test_notebook_executes_with_tiny_settings(tmp_path):
  text, html, images = _execute(TINY_SETTINGS.format(workdir=str(tmp_path / "run")))
  assert "asarm_jax from" in text and "tokens per round: traced loop" in text
  assert "speed-up" in html and "Random order" in html and "round 1" in html
  assert images == 1  # the per-round plot
  assert (tmp_path / "run" / "run.json").exists()


@pytest.mark.slow
def test_notebook_infills_with_a_hugging_face_directory(hf, tmp_path):
  """MODEL_DIR: the HF XLNet directory is loaded (no training, nothing written to it) and fills
  TEXT in every section; ALLOW_LOSSY_TOKENIZATION lets its newline through (kept in the result)."""
  import hf_xlnet_helpers  # pylint: disable=import-outside-toplevel (torch: only where needed)
  model_dir = hf.dirs["json"]
  before = hf_xlnet_helpers.snapshot(model_dir)
  text, html, images = _execute(HF_SETTINGS.format(model_dir=str(model_dir),
                                                   workdir=str(tmp_path / "run")))
  assert f"loaded {model_dir} (hf_xlnet, no training): 2 layers" in text
  assert "tokens per round: traced loop" in text
  assert "speed-up" in html and "Random order" in html and "round 1" in html
  assert html.count(" on the mat.\nThe dog ") == 4  # 2 samples per method, TEXT kept as given
  assert images == 1
  assert not (tmp_path / "run").exists()  # no training
  assert hf_xlnet_helpers.snapshot(model_dir) == before


def _code_cell(notebook, marker: str) -> str:
  """The source of the code cell that holds `marker`."""
  return next(cell.source for cell in notebook.cells
              if cell.cell_type == "code" and marker in cell.source)


def _install_cell(notebook) -> str:
  return _code_cell(notebook, "def checkout(")


@pytest.mark.parametrize("install_from, message", [
    ("", "set INSTALL_FROM in the settings cell"),
    ("/nonexistent/asarm_jax", "git clone /nonexistent/asarm_jax failed"),
])
def test_install_cell_outside_a_clone_stops_with_one_message(tmp_path, monkeypatch, install_from,
                                                              message):
  """Outside a checkout, a missing or unusable INSTALL_FROM stops the notebook with one message."""
  monkeypatch.chdir(tmp_path)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  with pytest.raises(SystemExit, match=message):
    exec(_install_cell(notebook), {"INSTALL_FROM": install_from})  # pylint: disable=exec-used
  assert not (tmp_path / "asarm_jax_repo").exists()


def test_install_cell_in_a_clone_uses_it(monkeypatch, capsys):
  monkeypatch.chdir(ROOT / "colab")
  namespace = {"INSTALL_FROM": ""}
  exec(_install_cell(nbformat.read(NOTEBOOK, as_version=4)), namespace)  # pylint: disable=exec-used
  assert namespace["ROOT"] == ROOT and f"asarm_jax from {ROOT}" in capsys.readouterr().out


def test_a_text_the_tokenizer_cannot_keep_stops_with_one_message(hf):
  """The comparison cell with XLNet's tokenizer and code (a newline), ALLOW_LOSSY_TOKENIZATION
  unset: one SystemExit naming the loss, before anything is compiled."""
  model = asarm_jax.load(hf.dirs["json"])
  namespace = dict(params=model.params, cfg=model.config, tokenizer=model.tokenizer, jax=jax,
                   np=np, infill_many=asarm_jax.infill_many, TEXT="def f(x):\n    return [MASK]\n",
                   NUM_SAMPLES=1, DRAFT_LEN=2, TEMPERATURE=1.0, SEED=0,
                   ALLOW_LOSSY_TOKENIZATION=False)
  cell = _code_cell(nbformat.read(NOTEBOOK, as_version=4), "runs[method] = infill_many(")
  with pytest.raises(SystemExit, match=r"^TEXT: the tokenizer cannot keep the visible text "
                     r"'def f\(x\):\\n    return' as it is: a newline at character 9: .*"
                     r"allow_lossy_tokenization=True"):
    exec(cell, namespace)  # pylint: disable=exec-used
  assert "runs" in namespace and not namespace["runs"]  # stopped before the first method ran

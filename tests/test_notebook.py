"""The Colab notebook runs headless from top to bottom with tiny settings, so it never rots."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

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


def _settings_index(notebook) -> int:
  tagged = [i for i, cell in enumerate(notebook.cells)
            if "parameters" in cell.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  return tagged[0]


def test_notebook_structure():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  settings = notebook.cells[_settings_index(notebook)].source
  for name in ("WORKDIR", "TRAIN_STEPS", "DRAFT_LEN", "NUM_SAMPLES", "TEXT"):
    assert f"{name} =" in settings
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
      "commit the notebook without outputs")


@pytest.mark.slow
def test_notebook_executes_with_tiny_settings(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  index = _settings_index(notebook)
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
      TINY_SETTINGS.format(workdir=str(tmp_path / "run"))))
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
  assert "asarm_jax from" in text and "tokens per round: traced loop" in text
  assert "speed-up" in html and "Random order" in html and "round 1" in html
  assert len(images) == 1  # the per-round plot
  assert (tmp_path / "run" / "run.json").exists()


def _install_cell(notebook) -> str:
  return next(cell.source for cell in notebook.cells
              if cell.cell_type == "code" and "def checkout(" in cell.source)


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

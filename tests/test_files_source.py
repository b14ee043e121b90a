"""The 'files:<dir>' data source: which files, the deterministic split, config fields, errors."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import train_helpers
from asarm_jax import run_config
from asarm_jax.data import eval_batches, files_source, load_texts, open_source, train_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _folder(root: pathlib.Path, count: int = 6) -> pathlib.Path:
  """`count` Python files in two subfolders, a text file, and files the source leaves out: hidden,
  too large, binary."""
  for index in range(count):
    path = root / f"pkg{index % 2}" / f"mod{index}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"def f{index}(x):\n    return x + {index}  # é\n")
  (root / "notes.txt").write_text("plain   text\n\twith tabs\n")
  (root / ".git").mkdir()
  (root / ".git" / "config.py").write_text("hidden = True\n")
  (root / "big.py").write_text("x = 1\n" * 400)  # 2,400 bytes
  (root / "blob.py").write_bytes(b"\x00\x01binary")
  return root


def _all_files(directory, **options):
  return {split: open_source(f"files:{directory}", split, **options).files
          for split in files_source.SPLITS}


def test_the_splits_partition_the_matching_files_in_path_order(tmp_path):
  directory = _folder(tmp_path)
  splits = _all_files(directory, file_glob="**/*.py", max_bytes=1000)
  expected = sorted(f"pkg{i % 2}/mod{i}.py" for i in range(6))
  assert sorted(splits["train"] + splits["validation"]) == expected
  assert not set(splits["train"]) & set(splits["validation"])
  assert splits["validation"] and splits["train"] == sorted(splits["train"])
  every = _all_files(directory, max_bytes=1000)  # the default glob: every file
  assert sorted(every["train"] + every["validation"]) == sorted(expected + ["notes.txt"])
  documents = open_source(f"files:{directory}", "train", file_glob="pkg0/*.py")
  assert documents[0] == (directory / documents.files[0]).read_text()


def test_the_split_is_stable_when_files_are_added(tmp_path):
  before = _all_files(_folder(tmp_path / "a", count=80), file_glob="**/*.py", max_bytes=1000)
  after = _all_files(_folder(tmp_path / "b", count=120), file_glob="**/*.py", max_bytes=1000)
  assert set(before["validation"]) <= set(after["validation"])
  assert set(before["train"]) <= set(after["train"])
  share = len(after["validation"]) / 120
  assert 0 < share < 0.15  # about files_source.VALIDATION_FRACTION


def test_max_bytes_leaves_out_larger_files_and_binary_files_are_skipped(tmp_path):
  directory = _folder(tmp_path)
  kept = open_source(f"files:{directory}", "train", file_glob="*.py", max_bytes=10_000).files
  assert kept == ["big.py"]  # blob.py is binary
  with pytest.raises(ValueError, match=r"2 files match data\.file_glob='\*\.py' \(hidden paths "
                                       r"aside\), 1 of them larger than data\.max_bytes=1000, "
                                       r"1 binary"):
    open_source(f"files:{directory}", "train", file_glob="*.py", max_bytes=1000)


@pytest.mark.parametrize("setup,split,options,error,pattern", [
    (lambda d: d / "missing", "train", {}, FileNotFoundError,
     r"source files:.*missing: .*missing does not exist or is not a directory"),
    (lambda d: d, "train", {"file_glob": "**/*.rs"}, ValueError,
     r"no file to read: 0 files match data\.file_glob='\*\*/\*\.rs'"),
    (lambda d: d, "test", {}, ValueError,
     r"has the splits \('train', 'validation'\); got 'test'"),
    (lambda d: d, "train", {"max_bytes": 0}, ValueError, r"data\.max_bytes must be >= 1; got 0"),
    (lambda d: d, "validation", {"file_glob": "notes.txt"}, ValueError,
     r"only one file matches data\.file_glob='notes\.txt', and it is in 'train': the "
     r"'validation' split needs a second file"),
])
def test_bad_folders_give_one_clear_error(setup, split, options, error, pattern, tmp_path):
  directory = setup(_folder(tmp_path))
  with pytest.raises(error, match=pattern) as caught:
    open_source(f"files:{directory}", split, **options)
  assert "\n" not in str(caught.value)


def test_the_pipeline_reads_the_files_exactly(tmp_path):
  directory = _folder(tmp_path)
  source = f"files:{directory}"
  texts = list(load_texts(source, "train", file_glob="**/*.py", max_bytes=1000))
  tokenizer = train_tokenizer(texts * 20, vocab_size=300)
  batches = list(eval_batches(source, "train", tokenizer, 16, 4, file_glob="**/*.py",
                              max_bytes=1000, process_index=0, process_count=1))
  tokens = np.concatenate([b["tokens"][b["valid"]] for b in batches])
  ends = np.flatnonzero(tokens == tokenizer.eos_id)
  documents = np.split(tokens, ends + 1)[:-1]
  assert [tokenizer.decode(d) for d in documents] == texts


def test_the_config_fields_reach_the_source(tmp_path):
  config = train_helpers.tiny_config()
  config.data.update(source=f"files:{tmp_path}", file_glob="**/*.py", max_bytes=123)
  data = run_config.parse(config).data
  assert data.source_options() == dict(text_key="text", data_dir=None, file_glob="**/*.py",
                                       max_bytes=123)
  identity = run_config.parse(config).identity()["tokenizer"]
  assert (identity["file_glob"], identity["max_bytes"]) == ("**/*.py", 123)
  assert "file_glob" not in run_config.parse(train_helpers.tiny_config()).identity()["tokenizer"]


def test_train_py_reports_a_bad_folder_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  directory = _folder(tmp_path / "code")
  runs = [subprocess.Popen(
      [sys.executable, "train.py", "--config", "configs/default.py", "--workdir",
       str(tmp_path / name), *flags], env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE) for name, flags in [
          ("a", [f"--config.data.source=files:{tmp_path / 'nowhere'}"]),
          ("b", [f"--config.data.source=files:{directory}", "--config.data.file_glob=**/*.rs"])]]
  patterns = [r"error: source files:.*nowhere: .*nowhere does not exist or is not a directory$",
              r"error: source files:.*code: no file to read: 0 files match "
              r"data\.file_glob='\*\*/\*\.rs'"]
  for process, pattern, name in zip(runs, patterns, "ab"):
    _, stderr = process.communicate(timeout=150)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1, stderr[-3000:]
    assert re.match(pattern, lines[0]), lines[0]
    assert not (tmp_path / name).exists()

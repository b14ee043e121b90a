"""Faulty data: empty or broken corpora, short sequences, tiny datasets, missing tokenizers.

Extends tests/test_data.py, which already covers: an empty corpus directory and a latin-1 file at
the StdlibCorpus level (test_empty_corpus_names_the_directory,
test_stdlib_corpus_skips_undecodable_files_and_excluded_dirs), one document shorter than an example
(test_dataset_smaller_than_a_batch_is_padded_and_num_batches_is_exact), and Tokenizer.load of a
missing or junk file (test_tokenizer_save_load_and_pickle). Here the same faults go through the
pipeline entry points (load_texts, make_dataset, train_iterator, eval_batches), with more kinds of
bad files, the valid mask is checked against the objective, and tiny datasets are run under a
timeout so that a hang fails instead of blocking the suite.
"""
from __future__ import annotations

import functools
import json
import pathlib
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import objective
from asarm_jax.data import (StdlibCorpus, eval_batches, load_texts, make_dataset, sources,
                            train_iterator, train_tokenizer)
from asarm_jax.model import ModelConfig, init_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALL_VALIDATION = 1 - 1e-9  # (almost) every file hashes into the validation split
SPLIT = "validation"
SINGLE = dict(process_index=0, process_count=1,
              read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
TIMEOUT_S = 60

GOOD_FILES = {
    "a.py": "def f(x):\n    return x + 1\n",
    "short.py": "y = 2\n",
    "pkg/__init__.py": "",  # an empty document: only its eos
    "pkg/mod.py": "class K:\n    '''é — ✓'''\n",
}
UNDECODABLE_FILES = {
    "latin1.py": "s = 'café'\n".encode("latin-1"),
    "middle.py": b"ok = 1\n" * 20 + b"bad = '\xff\xfe'\n" + b"ok = 2\n",
    "utf16.py": "u = 1\n".encode("utf-16"),  # BOM + UTF-16
    "surrogate.py": b"t = '\xed\xa0\x80'\n",  # an encoded lone surrogate: invalid UTF-8
}
IGNORED_FILES = {  # not .py, or inside an excluded directory
    "notes.txt": b"\xff not python",
    "test/test_a.py": b"z = 1\n",
    "__pycache__/a.py": b"\xff",
    "site-packages/pkg.py": b"w = 1\n",
}


def _write(root: pathlib.Path, files: dict[str, str | bytes]):
  for relative, content in files.items():
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
      path.write_text(content, encoding="utf-8")
    else:
      path.write_bytes(content)


def _use_corpus(monkeypatch, root: pathlib.Path):
  """Makes the 'stdlib' source read `root` (every file in the validation split)."""
  monkeypatch.setattr(sources, "StdlibCorpus", functools.partial(
      StdlibCorpus, root=root, validation_fraction=ALL_VALIDATION))


def _within(seconds: float, fn):
  """fn() on a daemon thread; fails (instead of hanging) if it is not done after `seconds`."""
  outcome = {}

  def run():
    try:
      outcome["value"] = fn()
    except BaseException as error:  # pylint: disable=broad-except (re-raised below)
      outcome["error"] = error

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"no result after {seconds} s: the pipeline hangs"
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def _valid_stream(batches):
  return np.concatenate([b["tokens"][b["valid"]] for b in batches])


@pytest.fixture(scope="module")
def tokenizer():
  texts = [(ROOT / "asarm_jax" / name).read_text() for name in ("masks.py", "processors.py")]
  return train_tokenizer(texts, vocab_size=400)


@pytest.fixture
def corpus_root(tmp_path):
  root = tmp_path / "corpus"
  _write(root, GOOD_FILES)
  _write(root, UNDECODABLE_FILES)
  _write(root, IGNORED_FILES)
  (root / "dangling.py").symlink_to(root / "no_such_target.py")  # listed, but unreadable
  return root


# --- bad files among good ones ------------------------------------------------------------------

def test_bad_files_are_skipped_and_counted(corpus_root):
  corpus = StdlibCorpus(SPLIT, root=corpus_root, validation_fraction=ALL_VALIDATION)
  assert sorted(corpus.files) == sorted(GOOD_FILES)
  assert [corpus[i] for i in range(len(corpus))] == [GOOD_FILES[f] for f in corpus.files]
  assert corpus.num_undecodable == len(UNDECODABLE_FILES)
  assert corpus.num_unreadable == 1
  assert f"undecodable={len(UNDECODABLE_FILES)}, unreadable=1" in repr(corpus)


def test_pipeline_streams_exactly_the_good_files(monkeypatch, corpus_root, tokenizer):
  _use_corpus(monkeypatch, corpus_root)
  texts = list(load_texts("stdlib", SPLIT))
  assert sorted(texts) == sorted(GOOD_FILES.values())
  batches = _within(TIMEOUT_S, lambda: list(eval_batches("stdlib", SPLIT, tokenizer, 16, 2,
                                                         **SINGLE)))
  expected = np.concatenate([tokenizer.encode(t) + [tokenizer.eos_id] for t in texts])
  np.testing.assert_array_equal(_valid_stream(batches), expected)
  # The empty file is a document of its own: one eos, no crash, no skipped neighbour.
  assert (expected == tokenizer.eos_id).sum() == len(GOOD_FILES)


# --- corpora with nothing usable ------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["empty", "only_ignored_files", "only_undecodable", "missing"])
def test_corpus_without_documents_fails_before_any_batch(monkeypatch, tmp_path, tokenizer, layout):
  root = tmp_path / "corpus"
  if layout != "missing":
    root.mkdir()
  if layout == "only_ignored_files":
    _write(root, IGNORED_FILES)
  elif layout == "only_undecodable":
    _write(root, UNDECODABLE_FILES)
  _use_corpus(monkeypatch, root)
  pattern = f"No UTF-8 `.py` files for split '{SPLIT}' under '{root}'"
  if layout == "only_undecodable":
    pattern += f" \\({len(UNDECODABLE_FILES)} undecodable, 0 unreadable"
  calls = {
      "load_texts": lambda: load_texts("stdlib", SPLIT),
      "make_dataset": lambda: make_dataset("stdlib", SPLIT, tokenizer, 16, 2, **SINGLE),
      "train_iterator": lambda: train_iterator("stdlib", tokenizer, 16, 2, seed=0, split=SPLIT,
                                               **SINGLE),
      "eval_batches": lambda: eval_batches("stdlib", SPLIT, tokenizer, 16, 2, **SINGLE),
  }
  for name, call in calls.items():
    with pytest.raises(ValueError, match=pattern):
      _within(TIMEOUT_S, call)
      pytest.fail(f"{name} accepted an empty corpus")


@pytest.mark.parametrize("max_documents, process_count, pattern", [
    (0, 1, r"has 0 documents, fewer than process_count=1"),
    (1, 2, r"has 1 documents, fewer than process_count=2"),
])
def test_shard_without_documents_fails_clearly(monkeypatch, corpus_root, tokenizer, max_documents,
                                               process_count, pattern):
  _use_corpus(monkeypatch, corpus_root)
  for index in range(process_count):
    with pytest.raises(ValueError, match=pattern):
      train_iterator("stdlib", tokenizer, 16, 2, seed=0, split=SPLIT, max_documents=max_documents,
                     process_index=index, process_count=process_count)


# --- sequences shorter than N, datasets smaller than a batch --------------------------------------

def test_training_stream_shorter_than_one_example_repeats_without_hang(monkeypatch, tmp_path,
                                                                       tokenizer):
  root = tmp_path / "corpus"
  _write(root, {"only.py": "x = 1\n"})
  _use_corpus(monkeypatch, root)
  document = tokenizer.encode("x = 1\n") + [tokenizer.eos_id]
  seq_len, batch_size = 8 * len(document) + 3, 4  # one batch holds ~32 copies of the corpus
  batches = train_iterator("stdlib", tokenizer, seq_len, batch_size, seed=0, split=SPLIT,
                           shuffle_window=1, **SINGLE)
  got = _within(TIMEOUT_S, lambda: [next(batches) for _ in range(3)])
  stream = np.concatenate([b["tokens"].reshape(-1) for b in got])
  assert all(b["valid"].all() for b in got)  # an infinite stream never pads
  copies = len(stream) // len(document)
  np.testing.assert_array_equal(stream[:copies * len(document)], np.tile(document, copies))


def test_finite_dataset_smaller_than_a_batch_pads_and_stops(monkeypatch, corpus_root, tokenizer):
  _use_corpus(monkeypatch, corpus_root)
  total = sum(len(tokenizer.encode(t)) + 1 for t in GOOD_FILES.values())
  seq_len, batch_size = total // 2 + 1, 5  # two examples; rows 2..4 are padding
  batches = _within(TIMEOUT_S, lambda: list(eval_batches(
      "stdlib", SPLIT, tokenizer, seq_len, batch_size, **SINGLE)))
  assert len(batches) == 1
  valid = batches[0]["valid"]
  assert valid.sum(axis=1).tolist() == [seq_len, total - seq_len, 0, 0, 0]
  assert (batches[0]["tokens"][~valid] == tokenizer.pad_id).all()
  more = _within(TIMEOUT_S, lambda: list(eval_batches(
      "stdlib", SPLIT, tokenizer, seq_len, batch_size, num_batches=4, **SINGLE)))
  assert [int(b["valid"].sum()) for b in more] == [total, 0, 0, 0]


def test_padding_never_reaches_the_loss(monkeypatch, corpus_root, tokenizer):
  """A padded batch (short rows and all-padding rows) in the objective: padding is never hidden,
  all-padding rows add no tokens, and the loss does not depend on the padding's tokens."""
  _use_corpus(monkeypatch, corpus_root)
  total = sum(len(tokenizer.encode(t)) + 1 for t in GOOD_FILES.values())
  seq_len = total // 2 + 1
  batch = next(eval_batches("stdlib", SPLIT, tokenizer, seq_len, 4, **SINGLE))
  valid = batch["valid"]
  assert valid[1].sum() < seq_len and not valid[2:].any()
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, d_model=16,
                    n_layers=1, n_heads=2, d_head=8, d_inner=32, max_len=seq_len)
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))  # one compilation
  masking = objective.MaskingConfig(min_rate=0.5, max_rate=0.5)
  loss_fn = jax.jit(functools.partial(objective.any_order_loss, model_cfg=cfg, masking=masking,
                                      deterministic=True))
  draw = jax.jit(objective.draw_order, static_argnums=(2,))
  order = draw(jax.random.split(jax.random.key(1))[0], jnp.asarray(valid), masking)
  assert not np.asarray(order.hidden)[~valid].any()
  loss, metrics = loss_fn(params, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(1))
  assert np.isfinite(float(loss))
  assert int(metrics.loss.count) == int(np.asarray(order.hidden).sum())
  assert int(metrics.loss.count) == sum(max(1, int(n * 0.5)) for n in valid.sum(1) if n)
  noisy = np.where(valid, batch["tokens"],
                   np.random.default_rng(0).integers(0, cfg.vocab_size, valid.shape))
  noisy_loss, _ = loss_fn(params, {"tokens": jnp.asarray(noisy, jnp.int32),
                                   "valid": jnp.asarray(valid)}, jax.random.key(1))
  np.testing.assert_allclose(float(noisy_loss), float(loss), rtol=1e-6)
  empty = {"tokens": jnp.zeros_like(batch["tokens"]), "valid": jnp.zeros_like(batch["valid"])}
  empty_loss, empty_metrics = loss_fn(params, empty, jax.random.key(1))
  assert float(empty_loss) == 0.0 and int(empty_metrics.loss.count) == 0


# --- missing or broken tokenizer files ----------------------------------------------------------

def test_missing_or_broken_tokenizer_in_a_run_directory(tmp_path, tokenizer):
  from asarm_jax import checkpoint  # pylint: disable=g-import-not-at-top (orbax is slow to load)

  workdir = tmp_path / "run"
  workdir.mkdir()
  model = {"vocab_size": tokenizer.vocab_size, "mask_token_id": tokenizer.mask_id}
  (workdir / "run.json").write_text(json.dumps({"format": 1, "identity": {}, "model": model}))
  with pytest.raises(FileNotFoundError, match=r"Tokenizer model not found: .*run/tokenizer\.model"):
    checkpoint.load_for_inference(workdir)
  tokenizer.save(workdir / "tokenizer.model")
  truncated = tokenizer.model_proto[:len(tokenizer.model_proto) // 2]
  (workdir / "tokenizer.model").write_bytes(truncated)
  with pytest.raises(ValueError, match=r"Bad tokenizer model .*run/tokenizer\.model"):
    checkpoint.load_for_inference(workdir)
  (workdir / "tokenizer.model").unlink()
  (workdir / "tokenizer.model").mkdir()
  with pytest.raises(FileNotFoundError, match=r"tokenizer\.model is a directory"):
    checkpoint.load_for_inference(workdir)


def test_training_with_a_missing_tokenizer_path_names_it(tmp_path):
  """train_and_evaluate refuses a data.tokenizer_path that does not exist (whether it leaves an
  empty workdir behind is checked, as an xfail for the training owner, in test_bad_inputs.py)."""
  import train_helpers  # pylint: disable=g-import-not-at-top
  from asarm_jax import train_lib  # pylint: disable=g-import-not-at-top

  missing = tmp_path / "nowhere" / "tokenizer.model"
  config = train_helpers.tiny_config(**{"data.tokenizer_path": str(missing),
                                        "data.max_documents": 4})
  with pytest.raises(FileNotFoundError, match=f"Tokenizer model not found: {missing}"):
    train_lib.train_and_evaluate(config, str(tmp_path / "workdir"))

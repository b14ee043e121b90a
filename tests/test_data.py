"""Tests of asarm_jax.data: stdlib corpus, tokenizer, sources and the grain pipeline."""
import json
import pickle

import grain

import numpy as np
import pytest
import tensorflow_datasets as tfds

from asarm_jax.data import (StdlibCorpus, Tokenizer, eval_batches, load_texts, make_dataset,
                            open_source, train_iterator, train_tokenizer)
from asarm_jax.data import stdlib_corpus
from asarm_jax.data.packing import PackedIterDataset

TINY_VOCAB = 512
MAX_DOCS = 40  # stdlib documents used by the tests
SINGLE = dict(process_index=0, process_count=1)

ROUND_TRIP_TEXTS = [
    "",
    "def f(x):\n    return x + 1\n",
    "class A:\n\tdef g(self):\n\t\tpass\r\n\n\n\n# trailing spaces   \n   ",
    "  leading spaces, then unicode: héllo wörld — ∑ ✓ 🙂 中文 e\u0301 \u200b\ufeff",
    "SentencePiece's own space mark ▁ and ▁▁x, literal <mask> </s> <pad> <unk> [MASK]",
    "\x00\x01 control bytes \x7f and a form feed \x0c and vertical tab \x0b",
]


class AsarmTinyText(tfds.core.GeneratorBasedBuilder):
  """A tiny TFDS text dataset, prepared locally as array_record (TensorFlow not needed)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 12),
            "validation": self._generate_examples(12, 15)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, {"text": f"document {i}: " + "spam and eggs\n" * i}


@pytest.fixture(scope="module")
def tokenizer():
  return train_tokenizer(load_texts("stdlib", "train", max_documents=MAX_DOCS), TINY_VOCAB)


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  AsarmTinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def _valid_stream(batches):
  """Concatenates the valid tokens of all batches in order."""
  return np.concatenate([b["tokens"][b["valid"]] for b in batches])


def _expected_stream(tokenizer, texts):
  return np.concatenate([tokenizer.encode(t) + [tokenizer.eos_id] for t in texts])


def _documents(tokenizer, stream):
  """Splits a token stream at eos and decodes every document."""
  ends = np.flatnonzero(stream == tokenizer.eos_id)
  return [tokenizer.decode(d) for d in np.split(stream, ends + 1)[:-1]]


# --- stdlib corpus ----------------------------------------------------------------------------

def test_stdlib_split_is_deterministic_disjoint_and_complete():
  root = stdlib_corpus.stdlib_root()
  train = stdlib_corpus.list_files(root, "train", 0.05)
  validation = stdlib_corpus.list_files(root, "validation", 0.05)
  assert train == stdlib_corpus.list_files(root, "train", 0.05)
  assert not set(train) & set(validation)
  assert 0.02 < len(validation) / (len(train) + len(validation)) < 0.1
  everything = train + validation
  assert "os.py" in everything and "json/decoder.py" in everything
  assert not [f for f in everything if {"test", "tests", "idlelib", "site-packages"}
              & set(f.split("/")[:-1])]
  assert all(stdlib_corpus.split_of(f, 0.05) == "validation" for f in validation)


def test_stdlib_corpus_skips_undecodable_files_and_excluded_dirs(tmp_path):
  (tmp_path / "good.py").write_text("x = 'é'\n", encoding="utf-8")
  (tmp_path / "latin1.py").write_bytes("y = 'é'\n".encode("latin-1"))
  for excluded in ("test", "site-packages", "idlelib"):
    (tmp_path / excluded).mkdir()
    (tmp_path / excluded / "module.py").write_text("z = 1\n")
  fraction = 1 - 1e-9  # (almost) every file goes to validation
  assert {stdlib_corpus.split_of(n, fraction) for n in ("good.py", "latin1.py")} == {"validation"}
  corpus = StdlibCorpus("validation", root=tmp_path, validation_fraction=fraction)
  assert corpus.files == ["good.py"] and corpus[0] == "x = 'é'\n"
  assert len(corpus) == 1 and corpus.num_undecodable == 1
  with pytest.raises(ValueError, match="1 undecodable"):
    (tmp_path / "good.py").unlink()
    StdlibCorpus("validation", root=tmp_path, validation_fraction=fraction)


def test_empty_corpus_names_the_directory(tmp_path):
  with pytest.raises(ValueError, match=str(tmp_path)):
    StdlibCorpus("train", root=tmp_path)
  with pytest.raises(ValueError, match="Unknown stdlib split"):
    StdlibCorpus("dev")


# --- tokenizer --------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tokenizer_round_trips_exactly(tokenizer, text):
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert tokenizer.mask_id not in ids
  assert tokenizer.pad_id not in ids and tokenizer.eos_id not in ids
  assert all(0 <= i < tokenizer.vocab_size for i in ids)


def test_tokenizer_round_trips_held_out_files_compactly(tokenizer):
  held_out = list(load_texts("stdlib", "validation", max_documents=5))
  assert all(tokenizer.decode(tokenizer.encode(t)) == t for t in held_out)
  chars = sum(len(t) for t in held_out)
  tokens = sum(len(tokenizer.encode(t)) for t in held_out)
  assert tokens / chars < 0.6  # a 512-piece vocabulary; 8k gives ~0.28
  newline, indent = tokenizer.encode("\n"), tokenizer.encode("        ")
  assert len(newline) == 1 and len(indent) == 1


def test_tokenizer_special_ids_and_decode_options(tokenizer):
  assert (tokenizer.pad_id, tokenizer.eos_id) == (0, 1)
  assert tokenizer.mask_id not in (tokenizer.pad_id, tokenizer.eos_id)
  assert TINY_VOCAB - 50 <= tokenizer.vocab_size <= TINY_VOCAB
  a, b = tokenizer.encode("a = 1"), tokenizer.encode("\nb = 2")
  ids = [tokenizer.pad_id] + a + [tokenizer.mask_id, tokenizer.mask_id] + b + [tokenizer.eos_id]
  assert tokenizer.decode(ids) == "a = 1\nb = 2"
  assert tokenizer.decode(ids, mask_text="[MASK]") == "a = 1[MASK][MASK]\nb = 2"
  assert tokenizer.decode(np.asarray(a, np.int32)) == "a = 1"
  with pytest.raises(ValueError, match="out of range"):
    tokenizer.decode([tokenizer.vocab_size])


def test_tokenizer_training_errors_are_clear():
  with pytest.raises(ValueError, match="training failed"):
    train_tokenizer([], TINY_VOCAB)
  with pytest.raises(ValueError, match="Vocabulary size is smaller"):
    train_tokenizer(["x = 'abcdefghijklmnopqrstuvwxyz'\n"] * 3, 20)


def test_tokenizer_save_load_and_pickle(tokenizer, tmp_path):
  path = tmp_path / "run" / "tokenizer.model"
  tokenizer.save(path)
  for copy in (Tokenizer.load(path), pickle.loads(pickle.dumps(tokenizer))):
    assert copy.vocab_size == tokenizer.vocab_size and copy.mask_id == tokenizer.mask_id
    assert copy.encode(ROUND_TRIP_TEXTS[2]) == tokenizer.encode(ROUND_TRIP_TEXTS[2])
  with pytest.raises(FileNotFoundError, match="missing.model"):
    Tokenizer.load(tmp_path / "missing.model")
  (tmp_path / "junk.model").write_bytes(b"not a sentencepiece model")
  with pytest.raises(ValueError, match="junk.model"):
    Tokenizer.load(tmp_path / "junk.model")


# --- pipeline -----------------------------------------------------------------------------------

def test_train_batches_shapes_and_dtypes(tokenizer):
  batches = train_iterator("stdlib", tokenizer, 64, 4, seed=0, max_documents=MAX_DOCS, **SINGLE)
  for _ in range(3):
    batch = next(batches)
    assert batch["tokens"].shape == batch["valid"].shape == (4, 64)
    assert batch["tokens"].dtype == np.int32 and batch["valid"].dtype == bool
    assert batch["valid"].all()  # an infinite packed stream has no padding
    assert batch["tokens"].min() >= 0 and batch["tokens"].max() < tokenizer.vocab_size
    assert not (batch["tokens"] == tokenizer.mask_id).any()


def test_eval_batches_pack_every_document_once_in_order(tokenizer):
  texts = list(load_texts("stdlib", "validation", max_documents=3))
  batches = list(eval_batches("stdlib", "validation", tokenizer, 128, 4, max_documents=3,
                              **SINGLE))
  np.testing.assert_array_equal(_valid_stream(batches), _expected_stream(tokenizer, texts))
  last = batches[-1]
  assert not last["valid"][-1].all()  # the tail is padding ...
  assert (last["tokens"][~last["valid"]] == tokenizer.pad_id).all()  # ... of pad ids
  for batch in batches[:-1]:
    assert batch["valid"].all()
  again = list(eval_batches("stdlib", "validation", tokenizer, 128, 4, max_documents=3,
                            **SINGLE))
  np.testing.assert_array_equal(np.stack([b["tokens"] for b in again]),
                                np.stack([b["tokens"] for b in batches]))


def test_dataset_smaller_than_a_batch_is_padded_and_num_batches_is_exact(tokenizer):
  text = next(load_texts("stdlib", "validation"))
  length = len(tokenizer.encode(text)) + 1
  seq_len = length + 7  # one document, shorter than one example
  batches = list(eval_batches("stdlib", "validation", tokenizer, seq_len, 3, max_documents=1,
                              **SINGLE))
  assert len(batches) == 1
  assert batches[0]["valid"].sum(axis=1).tolist() == [length, 0, 0]
  padded = list(eval_batches("stdlib", "validation", tokenizer, seq_len, 3, max_documents=1,
                             num_batches=3, **SINGLE))
  assert len(padded) == 3 and [b["valid"].sum() for b in padded] == [length, 0, 0]
  cut = list(eval_batches("stdlib", "validation", tokenizer, 16, 2, num_batches=2, **SINGLE))
  assert len(cut) == 2 and all(b["valid"].all() for b in cut)


def test_packing_is_exact_and_restorable_from_json_at_every_step():
  lengths = [5, 1, 12, 3, 7]
  documents = [np.arange(100 * i, 100 * i + n, dtype=np.int32) for i, n in enumerate(lengths)]
  parent = grain.MapDataset.source(documents).map(lambda d: {"tokens": d}).to_iter_dataset()
  packed = PackedIterDataset(parent, seq_len=4, pad_id=-1)
  examples = list(packed)
  assert len(examples) == 7  # ceil(28 / 4)
  stream = np.concatenate([e["tokens"] for e in examples])
  np.testing.assert_array_equal(stream[:28], np.concatenate(documents))
  assert all(e["valid"].all() for e in examples)
  short = list(PackedIterDataset(parent, seq_len=6, pad_id=-1))
  assert short[-1]["valid"].tolist() == [True, True, True, True, False, False]
  assert short[-1]["tokens"][4:].tolist() == [-1, -1]
  for step in range(len(short) + 1):
    iterator = iter(PackedIterDataset(parent, seq_len=6, pad_id=-1))
    for _ in range(step):
      next(iterator)
    restored = iter(PackedIterDataset(parent, seq_len=6, pad_id=-1))
    restored.set_state(json.loads(json.dumps(iterator.get_state())))
    rest = list(restored)
    assert len(rest) == len(short) - step
    for want, got in zip(short[step:], rest):
      np.testing.assert_array_equal(want["tokens"], got["tokens"])


def test_iterator_checkpoint_restores_identical_batches(tokenizer):
  def fresh(seed=7):
    return train_iterator("stdlib", tokenizer, 48, 3, seed=seed, max_documents=8,
                          shuffle_window=5, **SINGLE)  # restores cross windows

  batches = fresh()
  for checkpoint in range(4):
    state = json.loads(json.dumps(batches.get_state()))  # as grain / orbax store it
    expected = [next(batches) for _ in range(4)]
    restored = fresh()
    restored.set_state(state)
    for want, got in zip(expected, [next(restored) for _ in range(4)]):
      np.testing.assert_array_equal(want["tokens"], got["tokens"])
      np.testing.assert_array_equal(want["valid"], got["valid"])
  assert (next(fresh(seed=8))["tokens"] != next(fresh())["tokens"]).any()


def test_processes_get_disjoint_shards_covering_the_data(tokenizer):
  texts = list(load_texts("stdlib", "validation", max_documents=6))
  shards = []
  for index in range(2):
    batches = eval_batches("stdlib", "validation", tokenizer, 64, 2, max_documents=6,
                           process_index=index, process_count=2)
    shards.append(_documents(tokenizer, _valid_stream(list(batches))))
  assert len(shards[0]) == len(shards[1]) == 3
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(texts)
  with pytest.raises(ValueError, match="process_index"):
    make_dataset("stdlib", "train", tokenizer, 8, 1, process_index=2, process_count=2)


def test_shuffled_training_differs_per_process(tokenizer):
  first = [next(train_iterator("stdlib", tokenizer, 32, 2, seed=0, max_documents=MAX_DOCS,
                               process_index=i, process_count=2))["tokens"] for i in range(2)]
  assert (first[0] != first[1]).any()


# --- TFDS sources -----------------------------------------------------------------------------

def test_tfds_mock_data_flows_through_the_pipeline(tokenizer):
  with tfds.testing.mock_data(num_examples=7):
    texts = list(load_texts("tfds:lm1b", "train"))
    batches = list(eval_batches("tfds:lm1b", "train", tokenizer, 16, 2, **SINGLE))
    train_batch = next(train_iterator("tfds:lm1b", tokenizer, 16, 2, seed=0, shuffle_window=4,
                                      **SINGLE))
  assert len(texts) == 7 and all(isinstance(t, str) for t in texts)
  np.testing.assert_array_equal(_valid_stream(batches), _expected_stream(tokenizer, texts))
  assert train_batch["tokens"].shape == (2, 16) and train_batch["valid"].all()


def test_tfds_local_array_record_dataset(tokenizer, tiny_tfds_dir):
  source, kwargs = "tfds:asarm_tiny_text", dict(data_dir=tiny_tfds_dir, shuffle_window=8, **SINGLE)
  texts = list(load_texts(source, "validation", data_dir=tiny_tfds_dir))
  assert sorted(texts) == [f"document {i}: " + "spam and eggs\n" * i for i in range(12, 15)]
  batches = list(eval_batches(source, "validation", tokenizer, 32, 2, data_dir=tiny_tfds_dir,
                              **SINGLE))
  np.testing.assert_array_equal(_valid_stream(batches), _expected_stream(tokenizer, texts))
  train_texts = load_texts(source, "train", data_dir=tiny_tfds_dir)
  epoch_tokens = len(_expected_stream(tokenizer, train_texts))
  num_batches = 3 * epoch_tokens // (32 * 2)  # about three epochs
  batches = train_iterator(source, tokenizer, 32, 2, seed=1, **kwargs)
  next(batches)
  state = json.loads(json.dumps(batches.get_state()))
  want = [next(batches)["tokens"] for _ in range(num_batches)]
  restored = train_iterator(source, tokenizer, 32, 2, seed=1, **kwargs)
  restored.set_state(state)
  np.testing.assert_array_equal([next(restored)["tokens"] for _ in range(num_batches)], want)
  assert len(list(load_texts(source, "train[:5]", data_dir=tiny_tfds_dir))) == 5
  with pytest.raises(ValueError, match="'content'"):
    open_source(source, "train", text_key="content", data_dir=tiny_tfds_dir)
  with pytest.raises(ValueError, match="'dev'"):
    open_source(source, "dev", data_dir=tiny_tfds_dir)


def test_unknown_or_missing_sources_fail_early(tokenizer, tmp_path):
  with pytest.raises(ValueError, match="Unknown data source 'wiki'"):
    make_dataset("wiki", "train", tokenizer, 8, 1, **SINGLE)
  with pytest.raises(ValueError, match="Unknown data source 'tfds:'"):
    load_texts("tfds:", "train")
  with pytest.raises(ValueError, match="'no_such_dataset_xyz'"):
    make_dataset("tfds:no_such_dataset_xyz", "train", tokenizer, 8, 1, **SINGLE)
  with pytest.raises(FileNotFoundError, match="'lm1b' is not prepared"):
    load_texts("tfds:lm1b", "train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="seq_len"):
    make_dataset("stdlib", "train", tokenizer, 0, 1, **SINGLE)

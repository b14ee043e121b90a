"""The grain input pipeline shared by every source.

documents (random access) -> take the first `max_documents` -> shard by process -> shuffle (seeded,
reshuffled every epoch) -> repeat -> tokenize + append eos -> concatenate and split into `seq_len`
examples -> shuffle examples within windows (so that the pieces of one long document spread over
many batches) -> batch. Evaluation skips both shuffles.

Output batches are dicts of numpy arrays: `tokens` int32 [B, N] and `valid` bool [B, N]. Documents
are separated by eos inside an example (no other boundary marker). `valid` is False only on padding:
only a finite dataset pads, at its very end (the tail of the last example, and whole rows of the
last batch), so a training stream is all valid. A dataset smaller than one batch thus gives one
padded batch when finite, and repeats as often as needed when infinite.

Iterators are grain `DatasetIterator`s: `get_state()` / `set_state()` capture the exact position in
a JSON-safe dict (checkpoint it with the model, e.g. via grain's orbax `save`/`load`); restoring
yields the same next batches.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from asarm_jax.data import files_source
from asarm_jax.data.packing import PackedIterDataset
from asarm_jax.data.sources import open_source
from asarm_jax.data.tokenizer import Tokenizer

Batch = dict[str, np.ndarray]
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)


def _tokenize(text: str, *, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
  ids = tokenizer.encode(text)
  ids.append(tokenizer.eos_id)
  return {"tokens": np.asarray(ids, np.int32)}  # [len + 1]


def _stack_padded(examples: Sequence[Batch], *, batch_size: int) -> Batch:
  """Stacks examples into a batch, adding all-invalid pad rows up to `batch_size`."""
  batch = {}
  for key in ("tokens", "valid"):
    rows = np.stack([e[key] for e in examples])  # [b, N], b <= batch_size
    # Pad rows are zeros: tokens = pad id 0, valid = False.
    batch[key] = np.pad(rows, ((0, batch_size - len(examples)), (0, 0)))  # [B, N]
  return batch


def _resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only for the defaults

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"Need 0 <= process_index < process_count, got {process_index} and "
                     f"{process_count}.")
  return process_index, process_count


def make_dataset(source: str, split: str, tokenizer: Tokenizer, seq_len: int, batch_size: int, *,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 text_key: str = "text", data_dir: str | None = None,
                 file_glob: str = files_source.DEFAULT_GLOB,
                 max_bytes: int = files_source.DEFAULT_MAX_BYTES,
                 max_documents: int | None = None, shuffle_window: int = 1024,
                 read_options: grain.ReadOptions = DEFAULT_READ_OPTIONS) -> grain.IterDataset:
  """Builds the batched dataset of one process; `iter()` of it is a checkpointable iterator.

  Args:
    source: 'stdlib', 'tfds:<name>' or 'files:<dir>' (see `asarm_jax.data.sources`).
    split: split name of the source.
    tokenizer: turns documents into ids; its eos separates documents.
    seq_len: N, tokens per example.
    batch_size: B, examples per batch (per process).
    seed: shuffling seed (each epoch gets a new order derived from it).
    shuffle: shuffle documents and examples; False keeps source order (for evaluation).
    num_epochs: passes over the documents; None repeats forever.
    process_index, process_count: this process's shard, documents i with
      i % process_count == process_index; default from jax.
    text_key: feature holding the text (TFDS sources).
    data_dir: TFDS data directory (None: TFDS's default).
    file_glob, max_bytes: which files of a 'files:<dir>' source (asarm_jax.data.files_source).
    max_documents: use only the first documents of the source (before sharding).
    shuffle_window: examples shuffled together after packing (when `shuffle`); 1 disables.
    read_options: grain's threads and buffer for reading and tokenizing documents.

  Raises:
    ValueError / FileNotFoundError: bad arguments, unknown source, or a dataset that cannot
      be found; raised by this call, before any batch is made.
  """
  if seq_len < 1 or batch_size < 1:
    raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}.")
  if shuffle_window < 1:
    raise ValueError(f"shuffle_window must be positive, got {shuffle_window}.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None or positive, got {num_epochs}.")
  process_index, process_count = _resolve_process(process_index, process_count)
  documents = grain.MapDataset.source(
      open_source(source, split, text_key=text_key, data_dir=data_dir, file_glob=file_glob,
                  max_bytes=max_bytes))
  if max_documents is not None:
    documents = documents[:max_documents]
  if len(documents) < process_count:
    raise ValueError(f"{source!r} split {split!r} has {len(documents)} documents, fewer than "
                     f"process_count={process_count}.")
  documents = documents[process_index::process_count]
  if shuffle:
    documents = documents.shuffle(seed=seed)
  if num_epochs != 1:
    documents = documents.repeat(num_epochs)
  tokenized = documents.map(functools.partial(_tokenize, tokenizer=tokenizer))
  packed = PackedIterDataset(tokenized.to_iter_dataset(read_options), seq_len, tokenizer.pad_id)
  if shuffle and shuffle_window > 1:
    packed = grain.experimental.WindowShuffleIterDataset(
        packed, window_size=shuffle_window, seed=seed)
  return packed.batch(
      batch_size, batch_fn=functools.partial(_stack_padded, batch_size=batch_size))


def train_iterator(source: str, tokenizer: Tokenizer, seq_len: int, batch_size: int, *,
                   seed: int, split: str = "train", **kwargs) -> grain.DatasetIterator:
  """Infinite shuffled training batches (no epochs); checkpoint with get_state()/set_state().

  `kwargs` are the remaining keyword arguments of `make_dataset`.
  """
  dataset = make_dataset(source, split, tokenizer, seq_len, batch_size, seed=seed,
                         shuffle=True, num_epochs=None, **kwargs)
  return iter(dataset)


def eval_batches(source: str, split: str, tokenizer: Tokenizer, seq_len: int, batch_size: int, *,
                 num_batches: int | None = None, **kwargs) -> Iterator[Batch]:
  """Finite, deterministic batches: every document of this process's shard once, in order.

  With `num_batches`, exactly that many batches: the stream is cut, or extended with all-invalid
  batches, so that every process runs the same number of evaluation steps. `kwargs` are the
  remaining keyword arguments of `make_dataset` (not seed/shuffle/num_epochs). The dataset is
  opened and checked by this call; batches are produced lazily.
  """
  dataset = make_dataset(source, split, tokenizer, seq_len, batch_size, shuffle=False,
                         num_epochs=1, **kwargs)
  return _exactly(iter(dataset), num_batches, batch_size, seq_len)


def _exactly(batches: Iterator[Batch], num_batches: int | None, batch_size: int,
             seq_len: int) -> Iterator[Batch]:
  if num_batches is None:
    yield from batches
    return
  count = 0
  for _, batch in zip(range(num_batches), batches):  # never reads past num_batches
    yield batch
    count += 1
  for _ in range(num_batches - count):  # all padding: tokens = pad id 0, valid = False
    yield {"tokens": np.zeros((batch_size, seq_len), np.int32),  # [B, N]
           "valid": np.zeros((batch_size, seq_len), bool)}  # [B, N]

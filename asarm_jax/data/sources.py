"""Document sources named by a config string; each is a random-access sequence of str.

- `"stdlib"`: the embedded Python standard library corpus (splits 'train', 'validation').
- `"tfds:<name>"`: a TFDS dataset prepared as array_record, read with `tfds.data_source` (random
  access, no TensorFlow needed); `<name>` may carry a config, e.g. `tfds:lm1b`. The document text is
  the feature `text_key`; any TFDS split string works ('validation', 'train[:1%]', ...). Nothing is
  ever downloaded: the dataset must already be prepared in `data_dir` (TFDS's default if None),
  e.g. with `tfds build lm1b --file_format=array_record`.
- `"files:<dir>"`: the text or code files of a folder, one document each, chosen by `file_glob`
  and `max_bytes`, split deterministically into 'train' and 'validation' (see
  asarm_jax.data.files_source).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from asarm_jax.data import files_source
from asarm_jax.data.stdlib_corpus import StdlibCorpus

STDLIB = "stdlib"
TFDS_PREFIX = "tfds:"


class DocumentSource(Protocol):
  """What every source provides: `len(source)` documents, `source[i]` a str."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> str: ...


class TfdsTextSource:
  """Exposes one text feature of a TFDS random-access data source as str documents."""

  def __init__(self, data_source: Any, text_key: str, name: str):
    """Wraps `data_source` (a `tfds.data_source` result).

    Raises:
      ValueError: the examples have no feature `text_key`.
    """
    self._data_source = data_source
    self._text_key = text_key
    if len(data_source) and text_key not in data_source[0]:
      raise ValueError(f"TFDS dataset {name!r} has no feature {text_key!r}; its features are "
                       f"{sorted(data_source[0])}. Set text_key.")

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> str:
    text = self._data_source[index][self._text_key]
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _open_tfds(name: str, split: str, text_key: str, data_dir: str | None) -> TfdsTextSource:
  import tensorflow_datasets as tfds  # imported lazily: slow, and only this source needs it

  where = f"data_dir={data_dir!r}" if data_dir else "the default TFDS data_dir"
  try:
    data_source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown TFDS dataset {name!r} (source 'tfds:{name}').") from e
  except NotImplementedError as e:  # TFDS's answer when no random-access files exist
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared as array_record in {where}; build it first, "
        f"e.g. `tfds build {name} --file_format=array_record`.") from e
  except ValueError as e:  # e.g. unknown split
    raise ValueError(f"TFDS dataset {name!r}, split {split!r}: {e}") from e
  return TfdsTextSource(data_source, text_key, name)


def open_source(source: str, split: str, *, text_key: str = "text",
                data_dir: str | None = None, file_glob: str = files_source.DEFAULT_GLOB,
                max_bytes: int = files_source.DEFAULT_MAX_BYTES) -> DocumentSource:
  """Opens the documents of `source` (see the module docstring) for one split.

  `text_key` and `data_dir` are for TFDS sources, `file_glob` and `max_bytes` for 'files:<dir>'.

  Raises:
    ValueError: unknown source prefix, unknown dataset or split, missing text feature, an
      empty split, or a folder with no file to read.
    FileNotFoundError: a TFDS dataset that is not prepared, or a missing folder.
  """
  files_prefix = files_source.FILES_PREFIX
  if source == STDLIB:
    documents: DocumentSource = StdlibCorpus(split)
  elif source.startswith(TFDS_PREFIX) and source[len(TFDS_PREFIX):]:
    documents = _open_tfds(source[len(TFDS_PREFIX):], split, text_key, data_dir)
  elif source.startswith(files_prefix) and source[len(files_prefix):]:
    documents = files_source.FilesSource(source[len(files_prefix):], split, file_glob=file_glob,
                                         max_bytes=max_bytes)
  else:
    raise ValueError(f"Unknown data source {source!r}; expected {STDLIB!r}, "
                     f"'{TFDS_PREFIX}<name>' or '{files_prefix}<dir>'.")
  if not len(documents):
    raise ValueError(f"Data source {source!r}, split {split!r} has no documents.")
  return documents


def load_texts(source: str, split: str, *, max_documents: int | None = None,
               **options) -> Iterator[str]:
  """Iterates the raw documents of a split in source order (at most `max_documents`).

  `options` are `open_source`'s keyword arguments. The source is opened (and validated) by this
  call; the documents are read lazily.
  """
  documents = open_source(source, split, **options)
  count = len(documents) if max_documents is None else min(max_documents, len(documents))
  return (documents[i] for i in range(count))

"""Concatenate-then-split packing of token sequences, as a checkpointable grain IterDataset.

Each parent element is `{'tokens': int32 [L]}` (one document, eos included). Their concatenation is
cut into examples `{'tokens': int32 [N], 'valid': bool [N]}`; a document may straddle two or more
examples. Only the last example of a finite stream is padded (`pad_id`, valid False).

Why not `grain.experimental.ConcatThenSplitIterDataset`: its state holds tuples, which come back as
lists from a JSON round trip (grain's own `DatasetIterator.save` / orbax write JSON), and restoring
such a state silently replays the wrong elements (grain 0.2.18). The state here is JSON-safe:
the parent's state before the current document plus an offset into that document.
"""
from __future__ import annotations

from typing import Any

import grain
import numpy as np


class PackedIterDataset(grain.IterDataset):
  """Packs the `tokens` of the parent's elements into examples of `seq_len` tokens."""

  def __init__(self, parent: grain.IterDataset, seq_len: int, pad_id: int):
    super().__init__(parent)
    self._seq_len = seq_len
    self._pad_id = pad_id

  def __iter__(self) -> grain.DatasetIterator:
    return _PackedIterator(self._parent.__iter__(), self._seq_len, self._pad_id)


class _PackedIterator(grain.DatasetIterator):
  """State: the parent's state before the current document, and how much of it is used."""

  def __init__(self, parent: grain.DatasetIterator, seq_len: int, pad_id: int):
    super().__init__(parent)
    self._seq_len = seq_len
    self._pad_id = pad_id
    self._document_state = parent.get_state()
    self._document = np.zeros((0,), np.int32)  # [L]
    self._offset = 0

  def __next__(self) -> dict[str, np.ndarray]:
    tokens = np.full((self._seq_len,), self._pad_id, np.int32)  # [N]
    filled = 0
    while filled < self._seq_len:
      if self._offset == len(self._document):
        state = self._parent.get_state()
        try:
          document = next(self._parent)["tokens"]
        except StopIteration:
          break
        self._document_state, self._document, self._offset = state, document, 0
      take = min(self._seq_len - filled, len(self._document) - self._offset)
      tokens[filled:filled + take] = self._document[self._offset:self._offset + take]
      filled += take
      self._offset += take
    if filled == 0:
      raise StopIteration
    return {"tokens": tokens, "valid": np.arange(self._seq_len) < filled}  # [N], [N]

  def get_state(self) -> dict[str, Any]:
    return {"document_state": self._document_state, "offset": self._offset}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["document_state"])
    self._document_state = state["document_state"]
    self._offset = state["offset"]
    if self._offset:  # re-read the partly used document
      self._document = next(self._parent)["tokens"]
    else:
      self._document = np.zeros((0,), np.int32)

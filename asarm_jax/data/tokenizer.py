"""SentencePiece BPE tokenizer that round-trips any text exactly.

Exactness comes from: the identity normalizer, no extra-whitespace removal, no dummy prefix, and
byte fallback (a character outside the vocabulary becomes its UTF-8 bytes). SentencePiece writes
spaces as U+2581 ('▁') internally, so a literal U+2581 in the input is emitted as its three byte
tokens, which decode back to U+2581 rather than to a space.

Code-friendly pieces: '\\n' is a user-defined symbol (always a single token) and pieces made only of
spaces are allowed, so an indentation run is usually one token; pieces never span a space otherwise.

Id layout: pad=0, eos=1 (document separator), unk=2 (never produced, thanks to byte fallback),
mask=3 ('<mask>', a control symbol: encoding text never yields it, even the literal text '<mask>'),
then '\\n', the 256 byte tokens and the learned pieces.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

from etils import epath
import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
MASK_PIECE = "<mask>"
_SPACE_MARK = "\u2581"  # '▁', SentencePiece's internal space


def checked_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
  """`ids` as a list of ints.

  Raises:
    ValueError: an id outside [0, vocab_size).
  """
  ids = [int(i) for i in ids]
  bad = [i for i in ids if not 0 <= i < vocab_size]
  if bad:
    raise ValueError(f"Token ids out of range [0, {vocab_size}): {bad[:5]}")
  return ids


class Tokenizer:
  """Text <-> ids with the fixed special ids of this module (see the module docstring)."""

  def __init__(self, model_proto: bytes):
    """Wraps a serialized SentencePiece model made by `train_tokenizer`.

    Raises:
      ValueError: the model lacks this module's special-id layout.
    """
    self._proto = bytes(model_proto)
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    except RuntimeError as e:
      raise ValueError(f"Invalid SentencePiece model proto: {e}") from e
    mask_id = self._sp.piece_to_id(MASK_PIECE)
    layout_ok = (self._sp.pad_id() == PAD_ID and self._sp.eos_id() == EOS_ID
                 and self._sp.unk_id() == UNK_ID and self._sp.is_control(mask_id))
    if not layout_ok:
      raise ValueError("Not a tokenizer made by train_tokenizer: expected pad=0, eos=1, "
                       f"unk=2 and a {MASK_PIECE!r} control symbol.")
    self.mask_id: int = mask_id
    self._space_mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>")
                            for b in _SPACE_MARK.encode("utf-8")]

  @property
  def vocab_size(self) -> int:
    """Number of ids, special ones included (ids are in [0, vocab_size))."""
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model."""
    return self._proto

  def encode(self, text: str) -> list[int]:
    """Tokenizes `text` (any str without lone surrogates); never yields pad, eos or mask."""
    if _SPACE_MARK not in text:
      return self._sp.encode(text)
    ids: list[int] = []
    for i, part in enumerate(text.split(_SPACE_MARK)):
      if i:
        ids.extend(self._space_mark_ids)
      ids.extend(self._sp.encode(part))
    return ids

  def decode(self, ids: Iterable[int], *, mask_text: str | None = None) -> str:
    """Turns ids back into text; `decode(encode(s)) == s` for every str `s`.

    pad and eos render as nothing. mask renders as nothing too, or as `mask_text` when given
    (e.g. '[MASK]' to show the holes of a partly decoded sequence).

    Raises:
      ValueError: an id outside [0, vocab_size).
    """
    ids = checked_ids(ids, self.vocab_size)
    if mask_text is None:
      return self._sp.decode(ids)
    parts, start = [], 0
    for position, token in enumerate(ids):
      if token == self.mask_id:
        parts.append(self._sp.decode(ids[start:position]))
        start = position + 1
    parts.append(self._sp.decode(ids[start:]))
    return mask_text.join(parts)

  def decode_continuation(self, ids: Iterable[int]) -> str:
    """`decode` of ids that follow other text; the same as `decode`, as pieces carry no implicit
    spaces (XLNet's tokenizer differs here)."""
    return self.decode(ids)

  def lossy_reason(self, text: str) -> None:
    """Always None: every text round-trips (XLNet's tokenizer names what it loses here)."""
    del text  # nothing to check
    return None

  def save(self, path: str | epath.PathLike) -> None:
    """Writes the model proto to `path` (local or any etils.epath file system)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(self._proto)

  @classmethod
  def load(cls, path: str | epath.PathLike) -> Tokenizer:
    """Reads a model written by `save`.

    Raises:
      FileNotFoundError: nothing at `path`, or a directory.
      ValueError: the file is not a model made by `train_tokenizer`.
    """
    path = epath.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"Tokenizer model not found: {path}")
    if path.is_dir():
      raise FileNotFoundError(f"Tokenizer model not found: {path} is a directory; expected "
                              "the model file (e.g. <workdir>/tokenizer.model)")
    try:
      return cls(path.read_bytes())
    except ValueError as e:
      raise ValueError(f"Bad tokenizer model {path}: {e}") from e

  def __getstate__(self) -> bytes:
    return self._proto

  def __setstate__(self, state: bytes) -> None:
    self.__init__(state)

  def __repr__(self) -> str:
    return f"Tokenizer(vocab_size={self.vocab_size}, mask_id={self.mask_id})"


def _lines(texts: Iterable[str], max_chars: int) -> Iterator[str]:
  """Yields the lines of `texts` (with their '\\n'), stopping after about `max_chars` chars."""
  seen = 0
  for text in texts:
    for line in text.split("\n"):
      yield line + "\n"
      seen += len(line) + 1
    if seen >= max_chars:
      return


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, *,
                    max_sentences: int = 1_000_000, max_chars: int = 100_000_000,
                    character_coverage: float = 0.9995, num_threads: int = 2,
                    seed: int = 0) -> Tokenizer:
  """Trains a BPE tokenizer on documents, one SentencePiece sentence per line.

  Args:
    texts: documents (e.g. `load_texts('stdlib', 'train')`); read lazily.
    vocab_size: target number of ids. It is a soft limit: a corpus too small to supply that many
      pieces gives a smaller vocabulary (read `Tokenizer.vocab_size`). It must exceed the 256 byte
      tokens plus the special ids and the corpus's frequent characters (~400 is a safe minimum).
    max_sentences: lines SentencePiece keeps (a uniform sample if more are read).
    max_chars: stop reading `texts` after the document that reaches this many characters.
    character_coverage: share of characters covered by single-character pieces; the rest
      go through byte fallback.
    num_threads: SentencePiece trainer threads.
    seed: seed of SentencePiece's sentence sampling.

  Raises:
    ValueError: SentencePiece cannot train (no text, or `vocab_size` too small).
  """
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts, max_chars), model_writer=model,
        model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
        character_coverage=character_coverage, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, split_by_whitespace=True, allow_whitespace_only_pieces=True,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        control_symbols=[MASK_PIECE], user_defined_symbols=["\n"],
        input_sentence_size=max_sentences, shuffle_input_sentence=True,
        max_sentence_length=16384, num_threads=num_threads, minloglevel=2)
  except RuntimeError as e:  # e.g. no text, or vocab_size below the required pieces
    raise ValueError(f"SentencePiece training failed (vocab_size={vocab_size}): {e}") from e
  return Tokenizer(model.getvalue())

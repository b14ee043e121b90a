"""XLNet's tokenizer behind the interface of `asarm_jax.data.Tokenizer`, with transformers' ids.

The ids, normalisation, whitespace handling and decoding are those of transformers' (5.x)
`XLNetTokenizer`, which is a `tokenizers` pipeline built the same way whichever file it reads:

  special tokens   every special token ('<unk>', '<s>', '</s>', '<cls>', '<sep>', '<pad>', '<mask>',
                   '<eod>', '<eop>' in XLNet's vocabulary, at ids 0..8) is matched in the raw text
                   first: the literal text '<mask>' becomes id 6.
  normaliser       '``' and "''" -> '"', NFKD, accents stripped, lower case if `do_lower_case`,
                   then SentencePiece's precompiled character map when the vocabulary has one.
                   (transformers 5 strips accents whatever `keep_accents` says, and reads
                   `remove_space` without using it; so does this module.)
  pre-tokeniser    split on whitespace (every run of whitespace, newlines and tabs included, is one
                   word boundary), then '▁' is put before every word.
  model            Unigram over the SentencePiece pieces and scores (no byte fallback: a character
                   outside the vocabulary is '<unk>').
  decoder          '▁' -> ' ', the leading one of the first token dropped; `decode` skips special
                   tokens, as transformers' `decode(ids, skip_special_tokens=True)`.

The vocabulary comes from `tokenizer.json` (a Unigram model, and its precompiled map if any) when
the directory has one, else from `spiece.model` (read with sentencepiece's model proto): the
precedence of transformers 5, which also ignores the rest of tokenizer.json's pipeline and builds
the one above. Special-token names and `do_lower_case` come from `tokenizer_config.json` when
present. The pipeline runs on the `tokenizers` package (installed with transformers).

`encode` returns the ids of the text alone: no '<sep>' '<cls>' suffix (transformers adds one with
`add_special_tokens=True`). That is what infilling needs, as the sequence is the text.

What XLNet's tokenizer loses: runs of whitespace, newlines and tabs (each becomes one space),
leading and trailing whitespace, accents and other normalised characters, characters outside the
vocabulary, and the literal text of special tokens. `lossy_reason(text)` names the first such
loss of a text, or returns None when `decode(encode(text)) == text`.
"""
from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence

from asarm_jax.data.tokenizer import checked_ids

TOKENIZER_JSON = "tokenizer.json"
SPIECE_MODEL = "spiece.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
_SPACE_MARK = "\u2581"  # '▁', the word-start mark
# transformers' XLNetTokenizer defaults: (config key, token).
_NAMED_SPECIALS = (("unk_token", "<unk>"), ("bos_token", "<s>"), ("eos_token", "</s>"),
                   ("cls_token", "<cls>"), ("sep_token", "<sep>"), ("pad_token", "<pad>"),
                   ("mask_token", "<mask>"))
_DEFAULT_EXTRA_SPECIALS = ("<eop>", "<eod>")
_DOCUMENT_END = "<eod>"
# SentencePiece piece types (sentencepiece_model.proto).
_CONTROL, _USER_DEFINED = 3, 4


def _tokenizers():
  try:
    import tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("XLNet's tokenizer needs the `tokenizers` package (it comes with "
                      "transformers): pip install 'asarm_jax[hf]'") from None
  return tokenizers


class XLNetTokenizer:
  """Text <-> ids exactly as transformers' XLNetTokenizer (see the module docstring).

  Attributes:
    mask_id: id of '<mask>'.
    specials: the special tokens' texts, which `decode` renders as nothing.
  """

  def __init__(self, vocab: Sequence[tuple[str, float]], *, unk_id: int = 0,
               precompiled_charsmap: bytes | None = None, do_lower_case: bool = False,
               specials: Iterable[str] = (), added: Iterable[str] = (),
               mask_token: str = "<mask>", pad_token: str = "<pad>", eos_token: str = "</s>",
               files: Mapping[str, bytes] | None = None):
    """Builds the pipeline over a Unigram vocabulary.

    Args:
      vocab: (piece, score) per id.
      unk_id: the id of the unknown piece.
      precompiled_charsmap: SentencePiece's normalisation map, or None.
      do_lower_case: lower-case the text before segmenting it.
      specials: special tokens (matched in the text, skipped by `decode`).
      added: other tokens matched in the text (SentencePiece user-defined symbols).
      mask_token, pad_token, eos_token: which specials play these roles; the document separator
        (`eos_id`) is '<eod>' when the vocabulary has it (XLNet's pre-training put it between
        documents), else `eos_token`.
      files: the tokenizer files this vocabulary was read from, by name (`from_directory` sets
        them; `save` writes them back).

    Raises:
      ValueError: a special token missing from the vocabulary, or an empty vocabulary.
    """
    tk = _tokenizers()
    vocab = [(str(piece), float(score)) for piece, score in vocab]
    if not vocab:
      raise ValueError("the XLNet vocabulary is empty")
    ids = {piece: index for index, (piece, _) in enumerate(vocab)}
    specials = list(dict.fromkeys([*specials, mask_token, pad_token, eos_token]))
    missing = [token for token in [*specials, *added] if token not in ids]
    if missing:
      raise ValueError(f"special tokens {missing} are not in the {len(vocab)}-piece vocabulary")
    backend = tk.Tokenizer(tk.models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    steps = [tk.normalizers.Replace("``", '"'), tk.normalizers.Replace("''", '"'),
             tk.normalizers.NFKD(), tk.normalizers.StripAccents()]
    if do_lower_case:
      steps.append(tk.normalizers.Lowercase())
    if precompiled_charsmap:
      steps.append(tk.normalizers.Precompiled(precompiled_charsmap))
    backend.normalizer = tk.normalizers.Sequence(steps)
    backend.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.WhitespaceSplit(),
        tk.pre_tokenizers.Metaspace(replacement=_SPACE_MARK, prepend_scheme="always")])
    backend.decoder = tk.decoders.Metaspace(replacement=_SPACE_MARK, prepend_scheme="always")
    backend.add_special_tokens([tk.AddedToken(token, normalized=False, special=True)
                                for token in specials])
    backend.add_tokens([tk.AddedToken(token, normalized=False, special=False) for token in added])
    self._backend = backend
    self._vocab_size = len(vocab)
    self._unk_id = unk_id
    self.specials: tuple[str, ...] = tuple(specials)
    self._special_ids = frozenset(ids[token] for token in specials)
    self._special_pattern = re.compile("|".join(map(re.escape, sorted(specials, key=len,
                                                                      reverse=True))))
    self.mask_id: int = ids[mask_token]
    self._pad_id = ids[pad_token]
    self._eos_id = ids.get(_DOCUMENT_END, ids[eos_token])
    self._files = dict(files or {})
    # A character no piece holds, standing for '<mask>' while decoding with `mask_text`.
    self._hole = next(chr(c) for c in range(0xE000, 0xF900) if all(chr(c) not in piece
                                                                   for piece, _ in vocab))

  @classmethod
  def from_directory(cls, directory: str | pathlib.Path) -> XLNetTokenizer:
    """Reads the tokenizer of a transformers `save_pretrained` directory.

    Raises:
      FileNotFoundError: neither tokenizer.json nor spiece.model in `directory`.
      ValueError: a file that is not an XLNet (Unigram) tokenizer, naming the file.
    """
    directory = pathlib.Path(directory)
    config_path = directory / TOKENIZER_CONFIG
    config = _read_json(config_path) if config_path.is_file() else {}
    named = {key: _content(config.get(key, default)) for key, default in _NAMED_SPECIALS}
    extra = config.get("extra_special_tokens", config.get("additional_special_tokens",
                                                          _DEFAULT_EXTRA_SPECIALS))
    options = dict(do_lower_case=bool(config.get("do_lower_case", False)),
                   mask_token=named["mask_token"], pad_token=named["pad_token"],
                   eos_token=named["eos_token"])
    specials = [*named.values(), *map(_content, extra)]
    files = {TOKENIZER_CONFIG: config_path.read_bytes()} if config_path.is_file() else {}
    json_path, spiece_path = directory / TOKENIZER_JSON, directory / SPIECE_MODEL
    if json_path.is_file():
      vocab, unk_id, charsmap = _read_tokenizer_json(json_path)
      return cls(vocab, unk_id=unk_id, precompiled_charsmap=charsmap, specials=specials,
                 files={**files, TOKENIZER_JSON: json_path.read_bytes()}, **options)
    if spiece_path.is_file():
      proto = _read_spiece(spiece_path)
      vocab = [(piece.piece, piece.score) for piece in proto.pieces]
      control = [piece.piece for piece in proto.pieces if piece.type == _CONTROL]
      added = [piece.piece for piece in proto.pieces if piece.type == _USER_DEFINED]
      return cls(vocab, unk_id=proto.trainer_spec.unk_id,
                 precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap or None,
                 specials=[*specials, *control], added=added,
                 files={**files, SPIECE_MODEL: spiece_path.read_bytes()}, **options)
    raise FileNotFoundError(f"no tokenizer in {directory}: expected {TOKENIZER_JSON} or "
                            f"{SPIECE_MODEL} (save the tokenizer with save_pretrained too)")

  def save(self, directory: str | pathlib.Path) -> None:
    """Writes the files `from_directory` read (tokenizer.json or spiece.model, and
    tokenizer_config.json if there was one) into `directory`, which then reads back as this
    tokenizer, here and with transformers' `AutoTokenizer`.

    Raises:
      ValueError: a tokenizer built from a vocabulary, not read from a directory.
    """
    if not self._files:
      raise ValueError("this XLNetTokenizer was built from a vocabulary, not read from a "
                       "directory: there are no tokenizer files to save")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in self._files.items():
      (directory / name).write_bytes(content)

  @property
  def vocab_size(self) -> int:
    """Number of ids, special ones included (ids are in [0, vocab_size))."""
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def eos_id(self) -> int:
    """The document separator ('<eod>' in XLNet's vocabulary)."""
    return self._eos_id

  def encode(self, text: str) -> list[int]:
    """The ids of `text`, equal to transformers' `tok(text, add_special_tokens=False)`."""
    return self._backend.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int], *, mask_text: str | None = None) -> str:
    """Turns ids into text as transformers' `decode(ids, skip_special_tokens=True)`.

    Special tokens render as nothing; '<mask>' renders as `mask_text` when given (e.g. '[MASK]'
    to show the holes of a partly decoded sequence), spaced as the token would be.

    Raises:
      ValueError: an id outside [0, vocab_size).
    """
    ids = checked_ids(ids, self.vocab_size)
    if mask_text is None:
      return self._backend.decode(ids, skip_special_tokens=True)
    pieces = [self._hole if i == self.mask_id else self._backend.id_to_token(i)
              for i in ids if i == self.mask_id or i not in self._special_ids]
    return self._backend.decoder.decode(pieces).replace(self._hole, mask_text)

  def decode_continuation(self, ids: Iterable[int]) -> str:
    """`decode` of ids that follow other text: a word-start mark on the first token renders as
    a space (which `decode` drops at the start of a text)."""
    ids = list(ids)
    text = self.decode(ids)
    first = next((i for i in ids if int(i) not in self._special_ids), None)
    starts_word = first is not None and self._backend.id_to_token(int(first)).startswith(
        _SPACE_MARK)
    return " " + text if starts_word else text

  def lossy_reason(self, text: str) -> str | None:
    """None if `decode(encode(text)) == text`; otherwise the first loss, e.g.
    "a newline at character 12: XLNet's tokenizer turns each run of whitespace into one space ...".
    """
    if self.decode(self.encode(text)) == text:
      return None
    found = self._special_pattern.search(text)
    if found:
      return (f"the special token text {found.group(0)!r} at character {found.start()} (it "
              "becomes a special token, not text)")
    for run in re.finditer(r"\s+", text):
      inner = 0 < run.start() and run.end() < len(text)
      if run.group(0) != " " or not inner:
        where = " (leading)" if run.start() == 0 else " (trailing)" if not inner else ""
        return (f"{_describe_whitespace(run.group(0))} at character {run.start()}{where}: "
                "XLNet's tokenizer turns each run of whitespace into one space between words "
                "and drops it at the ends")
    for pair in ("``", "''"):
      if pair in text:
        return f"{pair!r} at character {text.index(pair)} is normalised to '\"'"
    for index, char in enumerate(text):
      normal = self._backend.normalizer.normalize_str(char)
      if normal != char:
        return (f"the character {char!r} (U+{ord(char):04X}) at character {index} is normalised "
                f"to {normal!r}")
    encoding = self._backend.encode(text, add_special_tokens=False)
    for token, (start, end) in zip(encoding.ids, encoding.offsets):
      if token == self._unk_id:
        return f"{text[start:end]!r} at character {start} is not in the vocabulary (<unk>)"
    decoded = self.decode(self.encode(text))
    first = next((i for i, (a, b) in enumerate(zip(text, decoded)) if a != b),
                 min(len(text), len(decoded)))
    return f"it decodes to a different text from character {first} on"

  def __repr__(self) -> str:
    return f"XLNetTokenizer(vocab_size={self.vocab_size}, mask_id={self.mask_id})"


def _describe_whitespace(run: str) -> str:
  if "\n" in run:
    return "a newline"
  if "\t" in run:
    return "a tab"
  if set(run) == {" "}:
    return f"a run of {len(run)} spaces" if len(run) > 1 else "a space"
  odd = next(char for char in run if char != " ")
  return f"the whitespace character U+{ord(odd):04X}"


def _content(token) -> str:
  """A token of tokenizer_config.json: a string or an AddedToken dict."""
  return token["content"] if isinstance(token, dict) else str(token)


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f"{path} is not valid JSON: {error}") from None


def _read_tokenizer_json(path: pathlib.Path) -> tuple[list[tuple[str, float]], int, bytes | None]:
  """(vocab, unk_id, precompiled charsmap) of a tokenizer.json holding a Unigram model."""
  import base64  # pylint: disable=g-import-not-at-top

  values = _read_json(path)
  model = values.get("model", {})
  vocab = model.get("vocab")
  if model.get("type", "Unigram") != "Unigram" or not isinstance(vocab, list):
    raise ValueError(f"{path} holds a {model.get('type', 'unknown')} model, not XLNet's Unigram "
                     "vocabulary of (piece, score) pairs")
  normalizer = values.get("normalizer") or {}
  steps = normalizer.get("normalizers", [normalizer]) if isinstance(normalizer, dict) else []
  charsmap = next((step["precompiled_charsmap"] for step in steps
                   if step.get("type") == "Precompiled" and step.get("precompiled_charsmap")),
                  None)
  unk_id = model.get("unk_id")
  return ([(piece, score) for piece, score in vocab], 0 if unk_id is None else int(unk_id),
          None if charsmap is None else base64.b64decode(charsmap))


def _read_spiece(path: pathlib.Path):
  """The SentencePiece ModelProto of `path`."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf.message import DecodeError  # pylint: disable=g-import-not-at-top

  proto = sentencepiece_model_pb2.ModelProto()
  try:
    proto.ParseFromString(path.read_bytes())
  except DecodeError as error:
    raise ValueError(f"{path} is not a SentencePiece model: {error}") from None
  if not proto.pieces:
    raise ValueError(f"{path} is not a SentencePiece model: it has no pieces")
  return proto

"""The documents of a folder of text or code files: data source 'files:<dir>'.

Which files: those under the folder matching `file_glob` (pathlib glob, relative to the folder,
e.g. '**/*.py'; default '**/*', every file), leaving out
  - paths with a hidden part (a name starting with '.': .git/, .venv/, .hidden files),
  - files larger than `max_bytes` (generated or minified files, data dumps),
  - binary files: a NUL byte among the first 8,000 bytes (git's test for binary files).
Each file is one document, read as UTF-8 (bytes that are not UTF-8 become U+FFFD).

Splits, deterministic and stable when files are added: a file belongs to 'validation' when the
SHA-1 of its relative path, read as a fraction of [0, 1), is below VALIDATION_FRACTION, else to
'train'; should that leave 'validation' empty, it holds the file of the lowest hash (so a folder of
two or more files always has both splits). Within a split, files are in path order.
"""
from __future__ import annotations

import functools
import hashlib
import pathlib

FILES_PREFIX = "files:"
SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.05
DEFAULT_GLOB = "**/*"
DEFAULT_MAX_BYTES = 1_000_000
_BINARY_PROBE = 8000


class FilesSource:
  """One split of a folder's files as str documents (see the module docstring)."""

  def __init__(self, directory: str, split: str, *, file_glob: str = DEFAULT_GLOB,
               max_bytes: int = DEFAULT_MAX_BYTES):
    """Lists the split's files (the contents are read by `__getitem__`).

    Raises:
      FileNotFoundError: the folder does not exist or is not a directory.
      ValueError: an unknown split, max_bytes < 1, or no file left to read (saying how many
        matched and why each was left out).
    """
    if split not in SPLITS:
      raise ValueError(f"source {FILES_PREFIX}{directory} has the splits {SPLITS}; got "
                       f"{split!r}")
    if max_bytes < 1:
      raise ValueError(f"data.max_bytes must be >= 1; got {max_bytes}")
    root = pathlib.Path(directory).expanduser()
    if not root.is_dir():
      raise FileNotFoundError(f"source {FILES_PREFIX}{directory}: {root} does not exist or is "
                              "not a directory")
    names = _split_files(str(root.resolve()), file_glob, max_bytes)[split]
    if not names:
      raise ValueError(f"source {FILES_PREFIX}{directory}: only one file matches "
                       f"data.file_glob={file_glob!r}, and it is in 'train': the {split!r} split "
                       "needs a second file")
    self._root = root
    self.files: list[str] = list(names)  # POSIX paths relative to the folder

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> str:
    return (self._root / self.files[index]).read_bytes().decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=16)
def _split_files(root: str, file_glob: str, max_bytes: int) -> dict[str, tuple[str, ...]]:
  """{split: relative paths in path order} of the folder `root` (listed once per process)."""
  base = pathlib.Path(root)
  matched = large = binary = 0
  kept = []
  for path in sorted(base.glob(file_glob)):
    relative = path.relative_to(base)
    if not path.is_file() or any(part.startswith(".") for part in relative.parts):
      continue
    matched += 1
    if path.stat().st_size > max_bytes:
      large += 1
    elif b"\0" in _head(path):
      binary += 1
    else:
      kept.append(relative.as_posix())
  if not kept:
    raise ValueError(f"source {FILES_PREFIX}{root}: no file to read: {matched} files match "
                     f"data.file_glob={file_glob!r} (hidden paths aside), {large} of them larger "
                     f"than data.max_bytes={max_bytes}, {binary} binary")
  validation = {name for name in kept if _hash_fraction(name) < VALIDATION_FRACTION}
  if not validation and len(kept) > 1:
    validation = {min(kept, key=_hash_fraction)}
  return {"validation": tuple(name for name in kept if name in validation),
          "train": tuple(name for name in kept if name not in validation)}


def _head(path: pathlib.Path) -> bytes:
  with path.open("rb") as file:
    return file.read(_BINARY_PROBE)


def _hash_fraction(name: str) -> float:
  """The SHA-1 of `name` as a number in [0, 1)."""
  return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2.0**64

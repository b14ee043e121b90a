"""The default corpus: the Python standard library sources of the running interpreter.

Every `.py` file under `sysconfig.get_paths()['stdlib']` is one document, except files inside
directories named in `EXCLUDED_DIRS` (third-party packages, the interpreter's own test suites, IDLE,
turtle demos, byte-code caches) and the `config-*` build directory. This keeps the corpus small
(about 650 files, 11 MB for CPython 3.11) and free of the huge, repetitive test suites.

Files are assigned to a split by a stable hash of their path relative to the stdlib root, so the
split is the same on every machine, run and process, and adding or removing one file never moves
another. Files that are not valid UTF-8 are skipped and counted in `StdlibCorpus.num_undecodable`;
files that cannot be read at all (e.g. dangling symlinks) in `StdlibCorpus.num_unreadable`.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import sysconfig
from collections.abc import Iterator

SPLITS = ("train", "validation")
EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages",  # third-party code
    "test", "tests", "idle_test",  # test suites (`test/` alone is ~120 MB)
    "idlelib", "turtledemo",  # IDE and demos
    "__pycache__",
})


def stdlib_root() -> pathlib.Path:
  """Returns the directory holding the running interpreter's standard library."""
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _hash_fraction(relative_path: str) -> float:
  """Maps a path to a stable number in [0, 1) (unlike `hash`, not salted per process)."""
  digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(relative_path: str, validation_fraction: float) -> str:
  """Returns 'validation' or 'train' for a file, given its POSIX path relative to the root."""
  return "validation" if _hash_fraction(relative_path) < validation_fraction else "train"


def _included_files(root: pathlib.Path) -> Iterator[str]:
  """Yields the POSIX paths, relative to `root`, of the `.py` files outside excluded dirs."""
  for directory, subdirectories, files in os.walk(root):
    relative = pathlib.Path(directory).relative_to(root)
    subdirectories[:] = [  # prune: never descend into excluded directories
        d for d in subdirectories if d not in EXCLUDED_DIRS
        and not (relative == pathlib.Path(".") and d.startswith("config-"))]
    yield from ((relative / f).as_posix() for f in files if f.endswith(".py"))


def list_files(root: pathlib.Path, split: str, validation_fraction: float) -> list[str]:
  """Lists the included `.py` files of one split as POSIX paths relative to `root`.

  The order is by hash (a fixed pseudo-random order), so any prefix is a varied subset.
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown stdlib split {split!r}; expected one of {SPLITS}.")
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
  names = [n for n in _included_files(root) if split_of(n, validation_fraction) == split]
  return sorted(names, key=_hash_fraction)


class StdlibCorpus:
  """Random-access source of stdlib documents: `corpus[i]` is the text of file `corpus.files[i]`.

  All files of the split are read and decoded once, at construction (~11 MB in total).
  Implements `__len__` / `__getitem__`, so it can be handed to `grain.MapDataset.source`.
  """

  def __init__(self, split: str = "train", *, root: str | pathlib.Path | None = None,
               validation_fraction: float = 0.05):
    """Reads the split's files.

    Args:
      split: 'train' or 'validation'.
      root: directory to scan; defaults to `stdlib_root()`.
      validation_fraction: expected share of files in the validation split.

    Raises:
      ValueError: unknown split, or no decodable `.py` file of the split under `root`.
    """
    self.root = stdlib_root() if root is None else pathlib.Path(root)
    self.split = split
    self.files: list[str] = []
    self._texts: list[str] = []
    self.num_undecodable = 0
    self.num_unreadable = 0
    for name in list_files(self.root, split, validation_fraction):
      try:
        text = (self.root / name).read_bytes().decode("utf-8")
      except UnicodeDecodeError:
        self.num_undecodable += 1
        continue
      except OSError:
        self.num_unreadable += 1
        continue
      self.files.append(name)
      self._texts.append(text)
    if not self._texts:
      raise ValueError(
          f"No UTF-8 `.py` files for split {split!r} under {str(self.root)!r} "
          f"({self.num_undecodable} undecodable, {self.num_unreadable} unreadable; "
          "excluded directories: "
          f"{sorted(EXCLUDED_DIRS)}).")

  def __len__(self) -> int:
    return len(self._texts)

  def __getitem__(self, index: int) -> str:
    return self._texts[index]

  def __repr__(self) -> str:
    return (f"StdlibCorpus(split={self.split!r}, root={str(self.root)!r}, "
            f"files={len(self)}, undecodable={self.num_undecodable}, "
            f"unreadable={self.num_unreadable})")

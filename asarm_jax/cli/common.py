"""The command-line convention shared by every application: absl flags, ml_collections `--config`
overrides, and one error path.

- `--help` (or `-h`) prints the application's flags, and for applications with a `--config` flag
  how to override a config key, then exits 0.
- A user mistake, whether in the flags (unknown flag, bad value, missing config file, unknown config
  key) or found by the library later (its documented `ValueError` / `FileNotFoundError` ...), ends
  with one line `error: ...` on stderr and exit status 2. No traceback.
- Ctrl-C outside a training loop ends with one line and exit status 130.
"""
from __future__ import annotations

import difflib
import logging as std_logging
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging

USAGE_STATUS = 2
INTERRUPTED_STATUS = 130
# What the library raises for bad input (its docstrings name these); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               FileExistsError, PermissionError)
_HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")
_CONFIG_HELP = """
Config overrides (any key of the --config file, nested keys with dots):
  --config.KEY=value        e.g. --config.num_train_steps=100 --config.model.d_model=256
"""


def one_line(message: object) -> str:
  """`message` with its line breaks and runs of blanks folded into single spaces."""
  return " ".join(str(message).split())


def fail(message: object) -> NoReturn:
  """Prints `error: <message>` as one line on stderr and exits with status 2."""
  print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(USAGE_STATUS)


def _config_path(argv: Sequence[str]) -> str | None:
  """The value of --config in `argv` (`--config PATH` or `--config=PATH`), without a `:arg`."""
  for index, arg in enumerate(argv):
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1].split(":")[0]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
  return None


def _unknown_config_keys(argv: Sequence[str]) -> list[str]:
  """One message per `--config.a.b=...` override whose key the config file does not have."""
  path = _config_path(argv)
  if path is None:
    return []
  try:
    config = runpy.run_path(path)["get_config"]()
  except Exception:  # pylint: disable=broad-except (the caller reports the original error)
    return []
  messages = []
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    dotted = arg[len("--config."):].split("=", 1)[0]
    node = config
    for depth, key in enumerate(dotted.split(".")):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        near = difflib.get_close_matches(key, keys, n=1)
        where = ".".join(["config", *dotted.split(".")[:depth]])
        hint = f"; did you mean {near[0]!r}?" if near else f"; {where} has {sorted(keys)}"
        messages.append(f"--config.{dotted}: unknown config key {key!r}{hint}")
        break
      node = node[key]
  return messages


def config_value(holder: flags.FlagHolder):
  """The ConfigDict of a `config_flags.DEFINE_config_file` flag; a file that cannot be loaded
  (missing, a syntax error, no get_config) is a user error naming the file."""
  try:
    config = holder.value
    config.keys()  # a file that failed to load raises on first use, not on `.value`
    return config
  except Exception as error:  # pylint: disable=broad-except (any failure to load is the user's)
    reasons = [line.strip() for line in str(error).splitlines() if line.strip()]
    path = flags.FLAGS[holder.name].serialize().split("=", 1)[-1]
    fail(f"--config {path}: cannot load the config file: {reasons[-1] if reasons else error}")


def register_positive_validators(*names: str) -> None:
  """Checks, while the flags are parsed, that each integer flag of `names` is unset or >= 1."""
  for name in names:
    flags.register_validator(name, lambda n: n is None or n >= 1, "must be >= 1")


def register_fractions_validator(name: str, *, closed: bool) -> None:
  """Checks, while the flags are parsed, that list flag `name` holds numbers in [0, 1] (`closed`)
  or in (0, 1); the error names the flag."""
  interval = "[0, 1]" if closed else "(0, 1)"

  def check(values: list[str]) -> bool:
    try:
      numbers = [float(value) for value in values]
    except ValueError:
      raise flags.ValidationError("must be comma-separated numbers") from None
    inside = (lambda x: 0 <= x <= 1) if closed else (lambda x: 0 < x < 1)
    if not numbers or not all(inside(x) for x in numbers):
      raise flags.ValidationError(f"must lie in {interval}")
    return True

  flags.register_validator(name, check)


def comma_integers(text: str, name: str) -> tuple[int, ...]:
  """The integers of a comma-separated flag value; ValueError naming --`name` otherwise."""
  try:
    return tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ValueError(f"--{name} must be comma-separated integers; got {text!r}") from None


def _help_text(module_name: str, summary: str, has_config: bool) -> str:
  listing = flags.FLAGS.module_help(module_name)
  return f"{summary.strip()}\n\nFlags:\n{listing}\n" + (_CONFIG_HELP if has_config else "")


def _flags_parser(module_name: str, summary: str) -> Callable[[list[str]], list[str]]:
  """An absl `flags_parser`: --help exits 0, every parse error exits 2 with one line."""

  def parse(argv: list[str]) -> list[str]:
    if any(arg in _HELP_FLAGS for arg in argv[1:]):
      print(_help_text(module_name, summary, "config" in flags.FLAGS))
      sys.exit(0)
    try:
      return flags.FLAGS(argv)
    except Exception as error:  # pylint: disable=broad-except (every parse error is the user's)
      unknown = _unknown_config_keys(argv) if isinstance(error, (AttributeError, KeyError)) else []
      fail("; ".join(unknown) if unknown else error)

  return parse


def run(main: Callable[[], object], *, module_name: str, summary: str) -> NoReturn:
  """Parses the flags and runs `main()` under the shared error path (see the module docstring).

  Args:
    main: the application, reading its flags; its return value is ignored.
    module_name: the module that defines the application's flags (listed by --help).
    summary: the application's usage text (its module docstring).
  """

  def guarded(argv: list[str]):
    if len(argv) > 1:
      fail(f"unexpected arguments {argv[1:]}; flags are written --name=value (see --help)")
    try:
      main()
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr, flush=True)
      sys.stdout.flush()
      # Not sys.exit: an interrupt that lands while XLA compiles leaves its threads running, and
      # tearing the interpreter down under them segfaults. Training loops handle Ctrl-C themselves
      # (they checkpoint, then exit), so nothing is left to save here.
      os._exit(INTERRUPTED_STATUS)  # pylint: disable=protected-access
    except USER_ERRORS as error:
      fail(error)

  app.run(guarded, flags_parser=_flags_parser(module_name, summary))
  sys.exit(0)  # app.run exits itself; this is for the type checker


def quiet_library_logs():
  """Library INFO logs (orbax, absl, jax) off stderr unless the user passes --verbosity."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.WARNING)
  # Orbax explains its read-only restores at WARNING level; keep them out of the printout. (A
  # record's levelno is on Python's scale: absl's logging.ERROR is -2, Python's 40.)
  logging.get_absl_handler().addFilter(
      lambda record: "orbax" not in record.pathname or record.levelno >= std_logging.ERROR)

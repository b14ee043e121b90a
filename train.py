"""Trains an AS-ARM: python train.py --config configs/default.py --workdir runs/default."""
import runpy
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from asarm_jax import train_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, tokenizer).",
                               required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; an override of a config key that does not exist is reported by name."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as error:
    key = str(error).strip("\"'")
    overrides = [arg for arg in argv[1:] if arg.startswith("--config.") and key in arg]
    config_path = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"),
                       None)
    known = ""
    if config_path:
      known = f"; top-level keys are {sorted(runpy.run_path(config_path)['get_config']().keys())}"
    sys.exit(f"error: {' '.join(overrides) or '--config'}: unknown config key {key!r}{known}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  try:
    train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)

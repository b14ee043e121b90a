"""Trains an AS-ARM: python train.py --config configs/default.py --workdir runs/default."""
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  # Keep orbax's per-save INFO lines out of the progress display.
  logging.get_absl_logger().addFilter(
      lambda record: "orbax" not in record.pathname or record.levelno >= logging.WARNING)
  train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)

"""Trains an AS-ARM with the any-order objective.

python train.py --config configs/default.py --workdir runs/default [--config.num_train_steps=100]

A workdir that holds checkpoints is resumed from the latest one (the first line says from which
step). Ctrl-C or SIGTERM writes a checkpoint of the step reached and stops; the same command then
resumes there.
"""
from __future__ import annotations

import signal

from absl import flags
from ml_collections import config_flags

from asarm_jax import checkpoint
from asarm_jax import train_lib
from asarm_jax.cli import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, tokenizer).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)


def main():
  """Trains, printing where the run starts and how it ended."""
  if _WORKDIR.value is None or not flags.FLAGS["config"].present:
    common.fail("train.py needs --config FILE and --workdir DIR, e.g. `python train.py "
                "--config configs/default.py --workdir runs/default` (see --help)")
  config = common.config_value(_CONFIG)
  common.quiet_library_logs()
  workdir = _WORKDIR.value
  resumed_from = checkpoint.latest_step(workdir)
  if resumed_from is not None:
    print(f"Resuming {workdir} from its checkpoint of step {resumed_from}.", flush=True)
  summary = train_lib.train_and_evaluate(config, workdir)
  if "train/preempted_at_step" in summary:
    step = int(summary["train/preempted_at_step"])
    signum = int(summary["train/stop_signal"])
    print(f"Stopped by {signal.Signals(signum).name} at step {step}: its checkpoint is written; "
          "run the same command to resume.", flush=True)
    if signum == signal.SIGINT:
      raise SystemExit(common.INTERRUPTED_STATUS)
    return
  losses = ", ".join(f"{key.removeprefix('eval/')} {value:.3f}" for key, value in summary.items()
                     if key.startswith("eval/loss"))
  print(f"Done: {workdir}" + (f"; held-out {losses}" if losses else ""), flush=True)


def run():
  """The `train.py` entry point."""
  common.run(main, module_name=__name__, summary=__doc__)

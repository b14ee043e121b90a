"""Trains an AS-ARM: python train.py --config configs/default.py --workdir runs/default."""
from asarm_jax.cli import train

if __name__ == "__main__":
  train.run()

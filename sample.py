"""Fills the [MASK] / [MASK*n] spans of a text: python sample.py --workdir runs/default --text '...'."""
from asarm_jax.cli import sample

if __name__ == "__main__":
  sample.run()

"""`python -m asarm_jax.evals`: the evaluation command line (see asarm_jax/cli/evals.py)."""
from asarm_jax.cli import evals

if __name__ == "__main__":
  evals.run()

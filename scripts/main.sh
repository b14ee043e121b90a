#!/usr/bin/env bash
# The README's main job: sets up .venv if needed, then runs the default job (see asarm_jax/cli/main_job.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m asarm_jax.cli.main_job "$@"

#!/usr/bin/env bash
# The README's test command: sets up .venv if needed, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
# One worker process per core, at most 4 (each holds its own compiled programs); a test module
# runs whole on one worker, so its module-scoped fixtures are built once.
workers=$(nproc)
workers=$(( workers < 4 ? workers : 4 ))
exec .venv/bin/python -m pytest tests -n "$workers" --dist loadfile "$@"

#!/usr/bin/env bash
# Creates .venv (if missing) and installs asarm_jax with its test and Hugging Face extras into it.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,hf]'

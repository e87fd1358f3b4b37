#!/usr/bin/env bash
# Set up and run the whole test suite: lint, type-check, pytest (real Orthanc, DCMTK, dciodvfy).
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash scripts/peers.sh
.venv/bin/ruff check dicomnode tests alembic bench training
.venv/bin/mypy
.venv/bin/lint-imports --no-cache --no-logo  # the import contracts in pyproject.toml (docs/architecture.md)
exec .venv/bin/pytest "$@"

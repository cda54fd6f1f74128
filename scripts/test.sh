#!/usr/bin/env bash
# The project's own checks: set up, lint, type-check, then the whole test suite (which
# starts real geth networks). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Go lives outside PATH on some machines; the tool tests build with it.
[ -d /usr/local/go/bin ] && export PATH="$PATH:/usr/local/go/bin"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two xdist workers: most of the suite waits on chains, not on the CPU, so two of its
# networks side by side take about two thirds of the time of one after another (the
# harness's own locks keep a disruptive test alone on the shared session network).
# CHAINHARNESS_TEST_WORKERS=0 runs it in one process.
exec .venv/bin/pytest -n "${CHAINHARNESS_TEST_WORKERS:-2}" --dist worksteal "$@"

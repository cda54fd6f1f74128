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
exec .venv/bin/pytest "$@"

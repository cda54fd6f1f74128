#!/usr/bin/env bash
# The main job: set up, then start a real 4-node geth Clique network and run the example
# tests against it (extra arguments go to pytest, e.g. --chain-nodes=8 or -n 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/pytest examples --chain-nodes=4 --chain-backend=auto -v -p no:cacheprovider "$@"

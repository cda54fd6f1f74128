#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtualenv with the package and its dev tools,
# a Docker engine with the local images (scripts/docker.sh, chainharness images build),
# Debian's mosquitto and chromium, geth v1.13.15 and v1.13.14, toxiproxy 2.12.0,
# cometbft 0.38.26, geth-pos (geth v1.17.10 and prysm v7.0.0) and Kubernetes v1.34.4 (for
# scripts/k8s.sh, with Debian's etcd-server, containerd and CNI plugins) built from the Go module
# proxy, anvil 1.7.1 and solc 0.8.37 from npm — all pinned, into git-ignored folders (.venv/, and .tools/ or $CHAINHARNESS_TOOLS
# when set). Re-running skips what is already there; it ends by running every tool
# (tools doctor), so a broken install fails here, with one line per broken tool.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Go lives outside PATH on some machines (non-login shells, CI).
[ -d /usr/local/go/bin ] && export PATH="$PATH:/usr/local/go/bin"

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
# The editable install follows code changes by itself; only a changed pyproject.toml (or a
# new interpreter) needs pip again, which saves ~10 s on every demo and test run.
stamp=.venv/.chainharness-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python -VV | tr -d '\n')"
if [ ! -x .venv/bin/chainharness ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the package and its dev tools into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  echo "$want" >"$stamp"
fi

# A tools folder named by the caller is where the runs will look: install there too.
export CHAINHARNESS_TOOLS="${CHAINHARNESS_TOOLS:-$PWD/.tools}"
tools=(geth toxiproxy cometbft geth-pos kubernetes)
.venv/bin/python -m pytest_chainharness.tools install "${tools[@]}" --dest "$CHAINHARNESS_TOOLS"
if command -v npm >/dev/null; then
  .venv/bin/python -m pytest_chainharness.tools install anvil solc --dest "$CHAINHARNESS_TOOLS"
  tools+=(anvil solc)
  # The contracts example's OpenZeppelin sources (node_modules is not committed).
  if [ ! -d examples/contracts/node_modules/@openzeppelin ]; then
    npm install --no-audit --no-fund --ignore-scripts --prefix examples/contracts >/dev/null
  fi
else
  echo "setup: npm not found: anvil and solc are not installed; their tests will be skipped" >&2
fi

# Debian packages, as root only: apt_install PACKAGE WHAT-SKIPS-WITHOUT-IT.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $1"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null; }
  else
    echo "setup: $1 is missing and cannot be installed here: $2" >&2
  fi
}

# mosquitto: the event bus's broker on the process backend.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt_install mosquitto "the bus tests will skip"
fi
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  tools+=(mosquitto)
fi

# The single-node Kubernetes cluster of scripts/k8s.sh (the kubernetes tests): etcd, a
# containerd of its own and the CNI plugins.
for package in etcd-server containerd runc containernetworking-plugins; do
  if ! dpkg -s "$package" >/dev/null 2>&1; then
    apt_install "$package" "the Kubernetes cluster tests will skip"
  fi
done

# Debian's chromium: the run report's browser check (tests/test_report.py) renders the
# report in it headless; playwright drives it, no browser is downloaded.
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium "the report's browser check will skip"
fi

# A Docker engine and the local images for the docker backend. Machines where no engine
# can be installed or started keep the process backend; the docker tests then skip and
# say why.
if bash scripts/docker.sh; then
  .venv/bin/chainharness images build
else
  echo "setup: no Docker engine: the docker backend and its tests are unavailable here" >&2
fi

# Every tool installed above must run and report its pinned version.
.venv/bin/python -m pytest_chainharness.tools doctor "${tools[@]}"

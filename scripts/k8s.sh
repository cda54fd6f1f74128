#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine for the kubernetes backend:
#
#   bash scripts/k8s.sh start [IMAGE...]   build (once, cached in the tools folder) and
#                                          start it; import IMAGEs (default: the harness's
#                                          local images) from the docker engine
#   bash scripts/k8s.sh stop               stop it and remove everything it made
#   bash scripts/k8s.sh status
#
# Kubernetes v1.34.4 is built from the Go module proxy; etcd, containerd (a separate one,
# never the docker engine's), runc and the CNI plugins come from Debian. Needs root.
# The cluster's files are under $CHAINHARNESS_K8S_DIR (default /var/lib/chainharness-k8s);
# its admin kubeconfig is admin.kubeconfig there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ -d /usr/local/go/bin ] && export PATH="$PATH:/usr/local/go/bin"
export CHAINHARNESS_TOOLS="${CHAINHARNESS_TOOLS:-$PWD/.tools}"
command=${1:-status}
shift || true

if [ "$command" = start ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "k8s: the cluster's kubelet and containerd need root" >&2
    exit 1
  fi
  need=()
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v containerd >/dev/null 2>&1 || need+=(containerd)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  if ((${#need[@]})); then
    echo "k8s: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
  fi
  if [ $# -eq 0 ]; then
    set -- chainharness/geth:v1.13.15 chainharness/geth:v1.13.14 chainharness/mosquitto:2 \
      chainharness/base:bookworm chainharness/python:3.11
  fi
fi
exec .venv/bin/python -m pytest_chainharness.tools.k8s "$command" "$@"

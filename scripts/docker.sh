#!/usr/bin/env bash
# Make a Docker engine answer on this machine: install Debian's docker.io (plus debootstrap,
# which `chainharness images build` needs, and docker-compose, the benchmark's baseline)
# when missing, and start dockerd in the background when no engine answers.
#
# The plugin never runs this: it talks to whatever engine DOCKER_HOST or the default
# socket gives. Machines without root or apt keep the process backend.
set -euo pipefail

log=${CHAINHARNESS_DOCKERD_LOG:-/var/log/chainharness-dockerd.log}

if docker info >/dev/null 2>&1; then
    echo "docker: an engine already answers ($(docker version --format '{{.Server.Version}}'))"
    exit 0
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if ((${#need[@]})); then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "docker: no engine answers and ${need[*]} cannot be installed here (needs root and apt)" >&2
        exit 1
    fi
    echo "docker: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
fi

# No iptables NAT: containers talk to each other and to published 127.0.0.1 ports only,
# never to the outside (and these machines have no outside to reach).
echo "docker: starting dockerd (log: $log)"
setsid nohup dockerd --iptables=false --ip-masq=false >"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "docker: engine $(docker version --format '{{.Server.Version}}') answers"
        exit 0
    fi
    sleep 0.5
done
echo "docker: dockerd did not answer within 30 s; last lines of $log:" >&2
tail -n 20 "$log" >&2
exit 1

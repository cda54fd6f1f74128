#!/usr/bin/env bash
# The baseline benchmarks/startup.py --client cometbft compares against: four CometBFT
# nodes on one host, set up the way the CometBFT docs describe, by hand.
#   cometbft_by_hand.sh COMETBFT DIR P2P0 RPC0 P2P1 RPC1 ...   (prints the node pids)
set -euo pipefail
bin=$1 dir=$2
shift 2
ports=("$@")
n=$((${#ports[@]} / 2))
"$bin" testnet --v "$n" --o "$dir" --starting-ip-address 127.0.0.1 >/dev/null
ids=()
for ((i = 0; i < n; i++)); do
  ids+=("$("$bin" show-node-id --home "$dir/node$i")")
done
for ((i = 0; i < n; i++)); do
  peers=""
  for ((j = 0; j < n; j++)); do
    [ "$i" = "$j" ] && continue
    peers+="${peers:+,}${ids[j]}@127.0.0.1:${ports[2 * j]}"
  done
  cfg=$dir/node$i/config/config.toml
  sed -i \
    -e "s|^proxy_app = .*|proxy_app = \"kvstore\"|" \
    -e "/^\[p2p\]/,/^\[/ s|^laddr = .*|laddr = \"tcp://127.0.0.1:${ports[2 * i]}\"|" \
    -e "/^\[rpc\]/,/^\[/ s|^laddr = .*|laddr = \"tcp://127.0.0.1:${ports[2 * i + 1]}\"|" \
    -e "s|^persistent_peers = .*|persistent_peers = \"$peers\"|" \
    -e "s|^allow_duplicate_ip = .*|allow_duplicate_ip = true|" \
    -e "s|^addr_book_strict = .*|addr_book_strict = false|" \
    "$cfg"
  "$bin" start --home "$dir/node$i" >"$dir/node$i.log" 2>&1 &
  echo $!
done

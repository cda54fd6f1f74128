#!/usr/bin/env bash
# The baseline benchmarks/startup.py --client geth-pos compares against: a geth + prysm
# proof-of-stake network of N nodes on one host, set up by hand the way the geth and
# prysm docs describe (dev genesis, prysmctl genesis, node 0 first, the others dialling
# it), with 2 s slots and 8 interop validators per node.
#   geth_pos_by_hand.sh GETH PRYSM_DIR DIR N BASE_PORT   (prints every process's pid)
set -euo pipefail
geth=$1 prysm=$2 dir=$3 n=$4 base=$5
mkdir -p "$dir"
port() { echo $((base + 20 * $1 + $2)); }  # node, offset: 0 rpc 1 ws 2 p2p 3 auth 4-7 beacon 8 validator

"$geth" --dev dumpgenesis 2>/dev/null >"$dir/dev.json"
python3 - "$dir" "$n" <<'EOF'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
doc = json.load(open(f"{d}/dev.json"))
for fork in ("osakaTime", "bogotaTime"):
    doc["config"].pop(fork, None)
doc["config"]["depositContractAddress"] = "0x4242424242424242424242424242424242424242"
doc["alloc"] = {a: v for a, v in doc["alloc"].items() if v.get("code")}
json.dump(doc, open(f"{d}/dev.json", "w"))
open(f"{d}/config.yml", "w").write(f"""CONFIG_NAME: byhand
PRESET_BASE: 'mainnet'
MIN_GENESIS_ACTIVE_VALIDATOR_COUNT: {8 * n}
GENESIS_DELAY: 0
SECONDS_PER_SLOT: 2
SLOTS_PER_EPOCH: 6
TERMINAL_TOTAL_DIFFICULTY: 0
DEPOSIT_CHAIN_ID: 1337
DEPOSIT_NETWORK_ID: 1337
DEPOSIT_CONTRACT_ADDRESS: 0x4242424242424242424242424242424242424242
GENESIS_FORK_VERSION: 0x20000089
ALTAIR_FORK_VERSION: 0x20000090
ALTAIR_FORK_EPOCH: 0
BELLATRIX_FORK_VERSION: 0x20000091
BELLATRIX_FORK_EPOCH: 0
CAPELLA_FORK_VERSION: 0x20000092
CAPELLA_FORK_EPOCH: 0
DENEB_FORK_VERSION: 0x20000093
DENEB_FORK_EPOCH: 0
ELECTRA_FORK_VERSION: 0x20000094
ELECTRA_FORK_EPOCH: 0
FULU_FORK_VERSION: 0x20000095
FULU_FORK_EPOCH: 18446744073709551615
""")
EOF
"$prysm/prysmctl" testnet generate-genesis --fork electra --num-validators $((8 * n)) \
  --genesis-time $(($(date +%s) + 6)) --chain-config-file "$dir/config.yml" \
  --geth-genesis-json-in "$dir/dev.json" --geth-genesis-json-out "$dir/genesis.json" \
  --output-ssz "$dir/genesis.ssz" >"$dir/genesis.log" 2>&1
openssl rand -hex 32 >"$dir/jwt.hex"

enode0="" peer0=""
for ((i = 0; i < n; i++)); do
  d=$dir/node$i
  "$geth" init --datadir "$d" --state.scheme hash "$dir/genesis.json" >"$d.init.log" 2>&1
  "$geth" --datadir "$d" --networkid 1337 --syncmode full --state.scheme hash --gcmode archive \
    --port "$(port $i 2)" --nat none --nodiscover --netrestrict 127.0.0.0/8 \
    --authrpc.port "$(port $i 3)" --authrpc.jwtsecret "$dir/jwt.hex" \
    --http --http.port "$(port $i 0)" --http.api eth,net,web3,admin --ipcdisable \
    >"$d.geth.log" 2>&1 &
  echo $!
  if [ -z "$enode0" ]; then
    until enode0=$(curl -sf -H 'Content-Type: application/json' \
      -d '{"jsonrpc":"2.0","id":1,"method":"admin_nodeInfo","params":[]}' \
      "http://127.0.0.1:$(port 0 0)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["enode"])' 2>/dev/null); do
      sleep 0.1
    done
  else
    until curl -sf -H 'Content-Type: application/json' \
      -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"admin_addPeer\",\"params\":[\"$enode0\"]}" \
      "http://127.0.0.1:$(port $i 0)" >/dev/null; do
      sleep 0.1
    done
  fi
  "$prysm/beacon-chain" --datadir "$d/beacon" --accept-terms-of-use \
    --chain-config-file "$dir/config.yml" --genesis-state "$dir/genesis.ssz" \
    --chain-id 1337 --contract-deployment-block 0 --min-sync-peers 0 \
    --execution-endpoint "http://127.0.0.1:$(port $i 3)" --jwt-secret "$dir/jwt.hex" \
    --no-discovery --bootstrap-node= --disable-quic --p2p-local-ip 127.0.0.1 \
    --p2p-tcp-port "$(port $i 4)" --rpc-port "$(port $i 5)" --http-port "$(port $i 6)" \
    --monitoring-port "$(port $i 7)" --subscribe-all-subnets \
    --suggested-fee-recipient 0x0000000000000000000000000000000000000001 \
    ${peer0:+--peer "$peer0"} >"$d.beacon.log" 2>&1 &
  echo $!
  if [ -z "$peer0" ]; then
    # Its peer id, from its log: /eth/v1/node/identity answers 500 without discovery.
    until id=$(grep -so 'peer id of [0-9A-Za-z]*' "$d.beacon.log" | head -1 | cut -d' ' -f4) && [ -n "$id" ]; do
      sleep 0.1
    done
    peer0=/ip4/127.0.0.1/tcp/$(port 0 4)/p2p/$id
  fi
  "$prysm/validator" --datadir "$d/validator" --accept-terms-of-use \
    --chain-config-file "$dir/config.yml" --beacon-rpc-provider "127.0.0.1:$(port $i 5)" \
    --beacon-rest-api-provider "http://127.0.0.1:$(port $i 6)" \
    --interop-num-validators 8 --interop-start-index $((8 * i)) \
    --monitoring-port "$(port $i 8)" \
    --suggested-fee-recipient 0x0000000000000000000000000000000000000001 >"$d.validator.log" 2>&1 &
  echo $!
done

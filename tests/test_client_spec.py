"""Client spec files: what validates, and the error for each kind of bad input."""

from __future__ import annotations

import json
import re
import signal
import textwrap
from pathlib import Path

import pytest

from pytest_chainharness.clients.spec import ClientSpecError, load_spec, render, request_body

#: The API's example, every key used.
EXAMPLE = """\
client: my-chain
binary: my-chain
image: my-org/my-chain:1.2
version: [my-chain, version]
ports: [p2p, rpc]
network_init:
  - [my-chain, testnet, --validators, "{nodes}", --out, "{network_dir}"]
home: "{network_dir}/node{index}"
node_init:
  - [my-chain, init, --home, "{home}"]
files:
  "{home}/config/config.toml": {p2p.allow_duplicate_ip: true}
node_id: [my-chain, show-node-id, --home, "{home}"]
peer: "{id}@{host}:{port.p2p}"
start: [my-chain, start, --home, "{home}", --p2p, "{bind}:{port.p2p}", --peers, "{peers}"]
env: {MY_CHAIN_LOG: info}
stop_signal: SIGTERM
ready:
  http: "http://{host}:{port.rpc}/health"
head:
  http: "http://{host}:{port.rpc}/status"
  height: result.sync_info.latest_block_height
  hash: result.sync_info.latest_block_hash
peers:
  http: "http://{host}:{port.rpc}/net_info"
  count: result.n_peers
metrics: "http://{host}:{port.rpc}/metrics"
"""


START = 'start: [my-chain, start, --home, "{home}", --p2p, "{bind}:{port.p2p}", --peers, "{peers}"]'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    binary = tmp_path / "my-chain"
    binary.write_text("#!/bin/sh\necho my-chain 1.2\n")
    binary.chmod(0o755)
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "client.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_api_example_validates(folder: Path) -> None:
    spec = load_spec(write(folder, EXAMPLE))
    assert spec.client == "my-chain"
    assert spec.ports == ("p2p", "rpc")
    assert spec.head.paths == {
        "height": "result.sync_info.latest_block_height",
        "hash": "result.sync_info.latest_block_hash",
    }
    assert spec.peers is not None
    assert spec.peers.paths == {"count": "result.n_peers"}
    assert spec.ready == ("http", "http://{host}:{port.rpc}/health")
    assert spec.stop_signal is signal.SIGTERM
    assert spec.files == {"{home}/config/config.toml": {"p2p.allow_duplicate_ip": True}}
    assert spec.network_init[0][3] == "{nodes}"


def test_a_jsonrpc_head_is_a_post_with_a_call(folder: Path) -> None:
    text = EXAMPLE.replace(
        '  http: "http://{host}:{port.rpc}/status"\n  height: result.sync_info.latest_block_height',
        '  http: "http://{host}:{port.rpc}"\n  jsonrpc: status\n  height: result.height',
    )
    spec = load_spec(write(folder, text))
    assert spec.head.method == "POST"
    assert request_body(spec.head, {}) == (
        '{"jsonrpc": "2.0", "id": 1, "method": "status", "params": []}'
    )


#: CometBFT's, on the API example.
REDIAL = """redial:
  http: "http://{host}:{port.rpc}"
  jsonrpc: dial_peers
  params: {peers: ["{target}"], persistent: true}
"""


def test_a_jsonrpc_body_keeps_its_own_braces_and_fills_its_strings(folder: Path) -> None:
    # The JSON's closing "}}" once read as an escaped brace, and the node got half a body.
    spec = load_spec(write(folder, EXAMPLE + REDIAL))
    assert spec.redial is not None
    body = request_body(spec.redial, {"target": "abc@127.0.0.1:26656"})
    assert body is not None
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "dial_peers",
        "params": {"peers": ["abc@127.0.0.1:26656"], "persistent": True},
    }
    assert render(spec.redial.url, {"host": "127.0.0.1", "port.rpc": "1"}) == "http://127.0.0.1:1"


def test_render_fills_placeholders_and_keeps_escaped_braces() -> None:
    values = {"host": "127.0.0.1", "port.rpc": "26657"}
    assert render('{"a": {{x}}} http://{host}:{port.rpc}', values) == (
        '{"a": {x}} http://127.0.0.1:26657'
    )


BAD = [
    ("client: [unclosed\n", 2, "not valid YAML"),
    ("- a list\n", 1, "a client spec is a mapping"),
    ("client: x\nclient: y\n", 2, "duplicate key 'client' (first at line 1)"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_not_a_spec(folder: Path, text: str, line: int, message: str) -> None:
    path = write(folder, text)
    with pytest.raises(ClientSpecError, match=rf"^{path}:{line}: .*{re.escape(message)}"):
        load_spec(path)


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "message"),
    [
        # Required keys.
        ("binary: my-chain\n", "", 1, "binary", "missing key"),
        ("  height: result.sync_info.latest_block_height\n", "", 21, "head.height", "missing key"),
        # Unknown keys, at the top and inside a probe.
        (
            "stop_signal: SIGTERM\n",
            "stop_signal: SIGTERM\nstop_sgnal: x\n",
            18,
            "stop_sgnal",
            "unknown key",
        ),
        (
            "  count: result.n_peers\n",
            "  count: result.n_peers\n  cnt: 1\n",
            27,
            "peers.cnt",
            "unknown key",
        ),
        # Placeholders that do not exist, ports that do not exist, and per-node ones
        # where only the network is known.
        (
            '--peers, "{peers}"]',
            '--peers, "{peerz}"]',
            15,
            "start[7]",
            "unknown placeholder {peerz}",
        ),
        ('"{bind}:{port.p2p}"', '"{bind}:{port.grpc}"', 15, "start[5]", "no port named 'grpc'"),
        (
            '"{nodes}", --out',
            '"{index}", --out',
            7,
            "network_init[0][3]",
            "{index} is not known here",
        ),
        (
            '--home, "{home}"]\nfiles',
            '--home, "{id}"]\nfiles',
            10,
            "node_init[0][3]",
            "{id} is not known here",
        ),
        # Values of the wrong kind.
        ("ports: [p2p, rpc]", "ports: [p2p, RPC]", 5, "ports[1]", "lower case"),
        ("ports: [p2p, rpc]", "ports: []", 5, "ports", "non-empty list"),
        ("stop_signal: SIGTERM", "stop_signal: SIGNOPE", 17, "stop_signal", "is not a signal"),
        (START, "start: my-chain start", 15, "start", "expected a command"),
        (
            '"{home}/config/config.toml"',
            '"{home}/config/config.ini"',
            12,
            "files.{home}/config/config.ini",
            "only .toml",
        ),
        (
            "ready:\n  http:",
            "ready:\n  tcp: x\n  http:",
            19,
            "ready",
            "one of http, tcp or command",
        ),
        (
            "  height: result.sync_info.latest_block_height",
            "  height: result[0]",
            22,
            "head.height",
            "dotted path",
        ),
        ('metrics: "http', 'metrics: "ftp', 27, "metrics", "not an http(s) URL"),
        (
            'metrics: "http://{host}:{port.rpc}/metrics"',
            'metrics: {http: "http://{host}:{port.rpc}/metrics", txpool: "mem pool"}',
            27,
            "metrics.txpool",
            "not a Prometheus metric name",
        ),
        (
            'metrics: "http://{host}:{port.rpc}/metrics"',
            'metrics: {url: "http://{host}:{port.rpc}/metrics"}',
            27,
            "metrics",
            "unknown key(s): url",
        ),
        # A JSON body's strings are templates too; redial dials what peer and peers say.
        (
            "metrics:",
            REDIAL.replace("{target}", "{home}") + "metrics:",
            30,
            "redial.params.peers[0]",
            "{home} is not known here",
        ),
        (
            'peers:\n  http: "http://{host}:{port.rpc}/net_info"\n  count: result.n_peers\n',
            REDIAL,
            25,
            "redial",
            "needs peers too",
        ),
    ],
)
def test_bad_spec_names_file_line_and_key(
    folder: Path, old: str, new: str, line: int, key: str, message: str
) -> None:
    assert old in EXAMPLE
    path = write(folder, EXAMPLE.replace(old, new, 1))
    with pytest.raises(ClientSpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: {key}: "), text
    assert message in text, text


def test_metrics_with_a_txpool_gauge(folder: Path) -> None:
    path = write(
        folder,
        EXAMPLE.replace(
            'metrics: "http://{host}:{port.rpc}/metrics"',
            'metrics:\n  http: "http://{host}:{port.rpc}/metrics"\n  txpool: chain_mempool_size',
        ),
    )
    spec = load_spec(path)
    assert spec.metrics == "http://{host}:{port.rpc}/metrics"
    assert spec.txpool_metric == "chain_mempool_size"


def test_a_missing_binary(folder: Path) -> None:
    path = write(folder, EXAMPLE.replace("binary: my-chain", "binary: no-such-chain-binary"))
    with pytest.raises(
        ClientSpecError, match=rf"^{path}:2: binary: 'no-such-chain-binary' not found"
    ):
        load_spec(path, root=folder)


def test_a_binary_that_is_not_executable(folder: Path) -> None:
    (folder / "my-chain").chmod(0o644)
    path = write(folder, EXAMPLE)
    with pytest.raises(ClientSpecError, match=rf"^{path}:2: binary: .*my-chain is not executable"):
        load_spec(path)


def test_the_binary_is_found_in_the_tools_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The project's own tools folder, not one the environment names.
    monkeypatch.delenv("CHAINHARNESS_TOOLS", raising=False)
    for version in ("0.9.0", "0.10.1"):
        binary = tmp_path / ".tools" / "toolchain" / version / "toolchain"
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    path = spec_dir / "c.yaml"
    path.write_text(EXAMPLE.replace("binary: my-chain", "binary: toolchain"))
    from pytest_chainharness.clients.spec import find_spec_binary

    spec = load_spec(path, root=tmp_path)
    assert find_spec_binary(spec, root=tmp_path).parent.name == "0.10.1"

"""The Clique signer process: signs headers for geth, refuses whatever a user could ask."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rlp
from eth_account import Account
from eth_utils.crypto import keccak

from pytest_chainharness.clients import clique_signer

KEY = "0x" + "11" * 32
ADDRESS = Account.from_key(KEY).address
#: The second signer the same process serves, on a socket of its own.
KEY2 = "22" * 32
ADDRESS2 = Account.from_key(KEY2).address


class Client:
    """geth's side of the socket: JSON values one after another."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buffer = b""
        self.next_id = 0

    def call(self, method: str, *params: Any) -> dict[str, Any]:
        self.next_id += 1
        # No newline at the end: the signer must not depend on one.
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": list(params)}
        self.sock.sendall(json.dumps(body).encode())
        while b"\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        line, self.buffer = self.buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        assert reply["id"] == self.next_id
        return reply

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def signer() -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    # Short path: a Unix socket path has at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ch-signer-") as tmp:
        folder = Path(tmp)
        alive = folder / "alive"
        alive.mkdir()
        path = folder / "s.ipc"
        argv = [sys.executable, clique_signer.script_path(), "--socket", str(path)]
        argv += ["--socket", str(folder / "s2.ipc")]
        proc = subprocess.Popen(
            [*argv, "--alive-while", str(alive)],
            env={**os.environ, clique_signer.KEY_ENV: f"{KEY},{KEY2}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (path.exists() and (folder / "s2.ipc").exists()):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield path, alive, proc
        proc.kill()
        proc.communicate()


@pytest.fixture
def client(signer: tuple[Path, Path, Any]) -> Iterator[Client]:
    connected = Client(signer[0])
    yield connected
    connected.close()


def header(fields: int = 16) -> bytes:
    encoded: bytes = rlp.encode([b"\x01" * 32] * fields)
    return encoded


def test_signs_a_header_as_clique_recovers_it(client: Client) -> None:
    assert client.call("account_version")["result"]
    assert client.call("account_list")["result"] == [ADDRESS.lower()]
    raw = header()
    reply = client.call("account_signData", clique_signer.CLIQUE_HEADER, ADDRESS, "0x" + raw.hex())
    signature = bytes.fromhex(reply["result"].removeprefix("0x"))
    assert len(signature) == 65
    assert Account._recover_hash(keccak(raw), signature=signature) == ADDRESS


def test_each_socket_signs_with_its_own_key(signer: tuple[Path, Path, Any]) -> None:
    other = Client(signer[0].with_name("s2.ipc"))
    try:
        assert other.call("account_list")["result"] == [ADDRESS2.lower()]
        raw = header()
        reply = other.call(
            "account_signData", clique_signer.CLIQUE_HEADER, ADDRESS2, "0x" + raw.hex()
        )
        signature = bytes.fromhex(reply["result"].removeprefix("0x"))
        assert Account._recover_hash(keccak(raw), signature=signature) == ADDRESS2
        refused = other.call(
            "account_signData", clique_signer.CLIQUE_HEADER, ADDRESS, "0x" + raw.hex()
        )
        assert "unknown account" in refused["error"]["message"]
    finally:
        other.close()


@pytest.mark.parametrize(
    ("method", "params"),
    [
        # What geth forwards for eth_sign and eth_sendTransaction from the signer.
        ("account_signData", ["text/plain", ADDRESS, "0x00"]),
        ("account_signTransaction", [{"from": ADDRESS, "to": ADDRESS, "gas": "0x5208"}]),
        ("account_signTypedData", [ADDRESS, {}]),
        # A "header" that is not one, and someone else's account.
        ("account_signData", [clique_signer.CLIQUE_HEADER, ADDRESS, "0x" + "ff" * 40]),
        ("account_signData", [clique_signer.CLIQUE_HEADER, ADDRESS, "0x" + header(3).hex()]),
        (
            "account_signData",
            [clique_signer.CLIQUE_HEADER, "0x" + "22" * 20, "0x" + header().hex()],
        ),
    ],
)
def test_refuses_everything_else(client: Client, method: str, params: list[Any]) -> None:
    reply = client.call(method, *params)
    assert "result" not in reply
    assert reply["error"]["message"].startswith("refused"), reply


def test_the_key_is_not_on_its_command_line_and_the_socket_is_private(
    signer: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    path, _, proc = signer
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert KEY.removeprefix("0x").encode() not in cmdline
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_exits_once_the_run_is_gone(signer: tuple[Path, Path, subprocess.Popen[bytes]]) -> None:
    _, alive, proc = signer
    alive.rmdir()
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("fields", [0, 1, 15, 16, 40])
def test_the_header_check_counts_rlp_items_as_rlp_does(fields: int) -> None:
    # Items of every RLP shape: a single byte, short and long strings, a nested list.
    items: list[object] = [b"\x01", b"ab" * 20, b"x" * 100, [b"y" * 60, b""]]
    value = [items[i % len(items)] for i in range(fields)]
    assert clique_signer.rlp_list_length(rlp.encode(value)) == fields


@pytest.mark.parametrize(
    "data", [b"", b"\x01", rlp.encode(b"not a list"), rlp.encode([b"a"]) + b"\x00", b"\xf9\x01"]
)
def test_the_header_check_refuses_what_is_not_one_list(data: bytes) -> None:
    assert clique_signer.rlp_list_length(data) is None

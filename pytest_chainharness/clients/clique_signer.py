"""A Clique signer's key, kept out of geth: signs block headers and nothing else.

geth v1.13 seals Clique blocks with a key from its account manager. A key in geth's
keystore must stay unlocked for that, and then ``eth_sendTransaction``, ``eth_sign`` and
``eth_signTransaction`` from the signer answer on the node's public RPC port to any local
user. Instead geth runs with ``--signer <socket>``: its account manager is this process,
which speaks the three calls of clef's external API that geth makes
(``account_version``, ``account_list``, ``account_signData``) and signs only data of
type ``application/x-clique-header`` that is an RLP list of a header's length.
Everything geth would forward from a user (text, transactions) is refused. The socket is
in the run's 0700 admin folder, so only the harness's user (and the node) can open it.

Every node start waits for its signer, so this starts fast: coincurve and pycryptodome's
keccak and the standard library only (eth-account and rlp took 2 s to import with four
signers starting on two busy cores).

Run as a script by the provider (``Helper`` of the geth adapter)::

    python clique_signer.py --socket PATH [--socket PATH ...] --alive-while DIR

with the keys, comma-separated in the order of the sockets, in CHAINHARNESS_SIGNER_KEY.
One process serves every signer of a run, each key on its own socket.
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import sys
import threading
from typing import Any

import coincurve
from Crypto.Hash import keccak

#: The content type geth passes for a header to seal (accounts.MimetypeClique).
CLIQUE_HEADER = "application/x-clique-header"
#: Where the provider passes the key (an environment only the same user can read).
KEY_ENV = "CHAINHARNESS_SIGNER_KEY"
_HEADERS_ONLY = "this signer signs Clique headers only (a test network's key is not for users)"
#: A header has 15 fields up to London (16 with a base fee; later forks add more).
_HEADER_FIELDS = range(15, 22)


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def script_path() -> str:
    return os.path.abspath(__file__)


def keccak256(data: bytes) -> bytes:
    return keccak.new(data=data, digest_bits=256).digest()


def rlp_list_length(data: bytes) -> int | None:
    """How many items the RLP list that is all of ``data`` has; None if it is not one."""

    def span(pos: int) -> tuple[int, int]:
        """(payload start, end) of the item at ``pos``."""
        first = data[pos]
        if first < 0x80:
            return pos, pos + 1
        for short, long in ((0x80, 0xB8), (0xC0, 0xF8)):
            if short <= first < long:
                return pos + 1, pos + 1 + first - short
            if long <= first < long + 8:
                size = first - long + 1
                length = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
                return pos + 1 + size, pos + 1 + size + length
        raise ValueError("bad RLP prefix")

    try:
        if not data or data[0] < 0xC0:
            return None
        start, end = span(0)
        if end != len(data):
            return None
        count, pos = 0, start
        while pos < end:
            pos = span(pos)[1]
            count += 1
        return count if pos == end else None
    except (IndexError, ValueError):
        return None


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = coincurve.PrivateKey(key)
        public = self._key.public_key.format(compressed=False)[1:]
        self.address = "0x" + keccak256(public)[-20:].hex()

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "account_version":
            return "6.1.0"  # clef's external API version at geth v1.13
        if method == "account_list":
            return [self.address]
        if method == "account_signData":
            return self.sign_data(*params)
        if method.startswith("account_"):
            # account_signTransaction: what geth forwards for eth_sendTransaction and
            # eth_signTransaction from the signer.
            raise Refused(-32000, f"refused {method}: {_HEADERS_ONLY}")
        raise Refused(-32601, f"the method {method} does not exist/is not available")

    def sign_data(self, content_type: str, address: str, data: str, *_: Any) -> str:
        if content_type != CLIQUE_HEADER:
            raise Refused(-32000, f"refused {content_type}: {_HEADERS_ONLY}")
        if str(address).lower() != self.address:
            raise Refused(-32000, f"refused: unknown account {address}")
        raw = bytes.fromhex(str(data).removeprefix("0x"))
        if rlp_list_length(raw) not in _HEADER_FIELDS:
            raise Refused(-32000, "refused: not a block header")
        # What geth's Clique recovers the signer from: keccak256 of this very encoding;
        # r, s and the recovery id 0/1, as Clique stores it.
        return "0x" + self._key.sign_recoverable(keccak256(raw), hasher=None).hex()


def reply(request: Any, signer: Signer) -> dict[str, Any] | None:
    if not isinstance(request, dict) or "method" not in request:
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "bad request"}}
    ident = request.get("id")
    try:
        result = signer.call(str(request["method"]), list(request.get("params") or []))
    except Refused as exc:
        print(f"refused {request['method']}: {exc}", file=sys.stderr, flush=True)
        return {"jsonrpc": "2.0", "id": ident, "error": {"code": exc.code, "message": str(exc)}}
    except (TypeError, ValueError) as exc:
        return {"jsonrpc": "2.0", "id": ident, "error": {"code": -32602, "message": str(exc)}}
    return None if ident is None else {"jsonrpc": "2.0", "id": ident, "result": result}


class _Connection(socketserver.BaseRequestHandler):
    signer: Signer  # set on a subclass per socket

    def handle(self) -> None:
        # geth's IPC client writes one JSON value after another; values need not end lines.
        decoder = json.JSONDecoder()
        buffer = ""
        try:
            while chunk := self.request.recv(65536):
                buffer += chunk.decode()
                while buffer.strip():
                    try:
                        value, end = decoder.raw_decode(buffer.lstrip())
                    except ValueError:
                        break  # incomplete: wait for more
                    buffer = buffer.lstrip()[end:]
                    batch = isinstance(value, list)
                    answers = [
                        r for v in (value if batch else [value]) if (r := reply(v, self.signer))
                    ]
                    if answers:
                        out = answers if batch else answers[0]
                        self.request.sendall((json.dumps(out) + "\n").encode())
        except (ConnectionError, UnicodeDecodeError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--socket", action="append", required=True, help="a Unix socket per key, in order"
    )
    parser.add_argument("--alive-while", help="exit once this path no longer exists")
    args = parser.parse_args(argv)
    keys = [k for k in os.environ.pop(KEY_ENV, "").split(",") if k]
    if len(keys) != len(args.socket):
        parser.error(f"{len(args.socket)} socket(s) but {len(keys)} key(s) in {KEY_ENV}")
    servers = []
    for path, key in zip(args.socket, keys, strict=True):
        signer = Signer(bytes.fromhex(key.removeprefix("0x")))
        handler = type("Connection", (_Connection,), {"signer": signer})
        if os.path.exists(path):
            os.unlink(path)  # left by a killed predecessor
        server = socketserver.ThreadingUnixStreamServer(path, handler)
        server.daemon_threads = True
        os.chmod(path, 0o600)
        print(f"signing Clique headers for {signer.address} on {path}", flush=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    stop = threading.Event()
    while not stop.wait(1.0):
        if args.alive_while and not os.path.exists(args.alive_while):
            break
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A Clique signer's key, kept out of geth: signs block headers and nothing else.

geth v1.13 seals Clique blocks with a key from its account manager. A key in geth's
keystore must stay unlocked for that, and then ``eth_sendTransaction``, ``eth_sign`` and
``eth_signTransaction`` from the signer answer on the node's public RPC port to any local
user. Instead geth runs with ``--signer <socket>``: its account manager is this process,
which speaks the three calls of clef's external API that geth makes
(``account_version``, ``account_list``, ``account_signData``) and signs only data of
type ``application/x-clique-header`` that decodes as a header. Everything geth would
forward from a user (text, transactions) is refused. The socket is in the run's 0700
admin folder, so only the harness's user (and the node) can open it.

Run as a script by the provider (``Helper`` of the geth adapter)::

    python clique_signer.py --socket PATH --alive-while DIR   # key in CHAINHARNESS_SIGNER_KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import rlp
from eth_account import Account
from eth_utils.crypto import keccak

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


class Signer:
    def __init__(self, key: bytes) -> None:
        self._account = Account.from_key(key)
        self.address = str(self._account.address)

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
        if str(address).lower() != self.address.lower():
            raise Refused(-32000, f"refused: unknown account {address}")
        raw = bytes.fromhex(str(data).removeprefix("0x"))
        try:
            fields = rlp.decode(raw)
        except rlp.DecodingError as exc:
            raise Refused(-32000, f"refused: not an RLP header: {exc}") from None
        if not isinstance(fields, list) or len(fields) not in _HEADER_FIELDS:
            raise Refused(-32000, "refused: not a block header")
        # What geth's Clique recovers the signer from: keccak256 of this very encoding.
        signed = self._account.unsafe_sign_hash(keccak(raw))
        return "0x" + bytes(signed.signature).hex()


def _reply(request: Any, signer: Signer) -> dict[str, Any] | None:
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


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, signer: Signer
) -> None:
    # geth's IPC client writes one JSON value after another; values need not end lines.
    decoder = json.JSONDecoder()
    buffer = ""
    try:
        while chunk := await reader.read(65536):
            buffer += chunk.decode()
            while buffer.strip():
                try:
                    value, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # incomplete: wait for more
                buffer = buffer.lstrip()[end:]
                batch = isinstance(value, list)
                replies = [r for v in (value if batch else [value]) if (r := _reply(v, signer))]
                if replies:
                    writer.write((json.dumps(replies if batch else replies[0]) + "\n").encode())
                    await writer.drain()
    except (ConnectionError, UnicodeDecodeError):
        pass
    finally:
        writer.close()


async def _main(args: argparse.Namespace, signer: Signer) -> None:
    if os.path.exists(args.socket):
        os.unlink(args.socket)  # left by a killed predecessor
    server = await asyncio.start_unix_server(
        lambda r, w: _serve_connection(r, w, signer), path=args.socket
    )
    os.chmod(args.socket, 0o600)
    print(f"signing Clique headers for {signer.address} on {args.socket}", flush=True)
    async with server:
        while not args.alive_while or os.path.exists(args.alive_while):
            await asyncio.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Unix socket to serve geth on")
    parser.add_argument("--alive-while", help="exit once this path no longer exists")
    args = parser.parse_args(argv)
    key = os.environ.pop(KEY_ENV, "")
    if not key:
        parser.error(f"no key: set {KEY_ENV}")
    asyncio.run(_main(args, Signer(bytes.fromhex(key.removeprefix("0x")))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

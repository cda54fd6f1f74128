"""Contracts on an EVM chain: artifacts, the opcode check, deploy, and watched logs.

``Chain.deploy``, ``Chain.compile`` and ``Chain.watch`` are thin wrappers over this
module. The chain's EVM version is the client adapter's (``evm_version``): geth v1.13
with Clique runs ``paris`` (no Shanghai, so no PUSH0), anvil the newest fork.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3.contract import Contract
from web3.exceptions import ContractLogicError, MismatchedABI, Web3ValidationError

from ._errors import ChainHarnessError
from .clients._evm import EVM_VERSIONS

if TYPE_CHECKING:
    from .chain import Chain, Node

__all__ = [
    "EVM_VERSIONS",
    "Artifact",
    "check_bytecode",
    "deploy",
    "load_artifact",
    "unsupported_opcodes",
    "watch",
]

#: Opcodes newer than Berlin: byte → (name, the first EVM version that runs it).
NEW_OPCODES: dict[int, tuple[str, str]] = {
    0x48: ("BASEFEE", "london"),
    0x5F: ("PUSH0", "shanghai"),
    0x49: ("BLOBHASH", "cancun"),
    0x4A: ("BLOBBASEFEE", "cancun"),
    0x5C: ("TLOAD", "cancun"),
    0x5D: ("TSTORE", "cancun"),
    0x5E: ("MCOPY", "cancun"),
    0x1E: ("CLZ", "osaka"),
}
_PUSH1, _PUSH32 = 0x60, 0x7F
#: The keys solc's CBOR metadata opens with (``a1``-``a4`` map, then a text key).
_METADATA_KEYS = (b"ipfs", b"solc", b"bzzr0", b"bzzr1", b"experimental")


@dataclass(frozen=True)
class Artifact:
    """A contract ready to deploy: its name, ABI and creation bytecode."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    #: Where it came from (a path, or "dict"), for error messages.
    source: str


def load_artifact(artifact: str | os.PathLike[str] | Mapping[str, Any]) -> Artifact:
    """Read a Foundry artifact, a Hardhat artifact or an ``{abi, bytecode}`` dict."""
    if isinstance(artifact, Mapping):
        name = artifact.get("contractName") or artifact.get("name") or "contract"
        return _from_dict(artifact, "dict", str(name))
    path = Path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"contract artifact {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"contract artifact {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"contract artifact {path}: {_FORMATS}, not a JSON {type(data).__name__}")
    name = str(data.get("contractName") or path.stem)
    return _from_dict(data, str(path), name)


_FORMATS = (
    "expected a Foundry artifact (abi, bytecode.object), a Hardhat artifact "
    "(_format hh-sol-artifact-1: abi, bytecode) or a dict with abi and bytecode"
)


def _from_dict(data: Mapping[str, Any], source: str, name: str) -> Artifact:
    abi, code = data.get("abi"), data.get("bytecode")
    if isinstance(code, Mapping):  # Foundry: {"object": "0x…", "linkReferences": …}
        code = code.get("object")
    if not isinstance(abi, list) or not isinstance(code, str):
        raise ValueError(f"contract artifact {source}: unknown format; {_FORMATS}")
    text = code.removeprefix("0x")
    if not text:
        raise ValueError(
            f"{name} ({source}) has no bytecode: an abstract contract or an interface "
            "cannot be deployed"
        )
    if "__" in text:
        raise ValueError(
            f"{name} ({source}) has unlinked library references "
            f"({text[text.index('__') :][:40]}…): link the libraries before deploying"
        )
    try:
        bytecode = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{name} ({source}): bytecode is not hex") from None
    return Artifact(name, list(abi), bytecode, source)


# -- the opcode check -------------------------------------------------------------------------


def _metadata_spans(code: bytes) -> list[tuple[int, int]]:
    """Where solc's CBOR metadata sits in ``code`` (data, not instructions): after the
    runtime code and after every contract embedded for ``new``. Each ends in its own
    length as two big-endian bytes."""
    spans = []
    for start in range(len(code) - 8):
        if code[start] not in (0xA1, 0xA2, 0xA3, 0xA4) or not 0x64 <= code[start + 1] <= 0x6C:
            continue
        key = code[start + 2 : start + 2 + (code[start + 1] - 0x60)]
        if key not in _METADATA_KEYS:
            continue
        for end in range(start + 8, min(len(code) - 1, start + 120)):
            if int.from_bytes(code[end : end + 2], "big") == end - start:
                spans.append((start, end + 2))
                break
    return spans


def unsupported_opcodes(code: bytes, evm_version: str) -> list[tuple[int, str, str]]:
    """(offset, opcode, first EVM version) of each instruction ``evm_version`` cannot run.

    Walks instructions, not bytes: a PUSH's argument is data (``0x605f`` is PUSH1 0x5f,
    not PUSH0), and so is solc's metadata.
    """
    if evm_version not in EVM_VERSIONS:
        raise ValueError(f"unknown EVM version {evm_version!r}; known: {', '.join(EVM_VERSIONS)}")
    runs = EVM_VERSIONS.index(evm_version)
    skip = dict(_metadata_spans(code))
    found: list[tuple[int, str, str]] = []
    at = 0
    while at < len(code):
        if at in skip:
            at = skip[at]
            continue
        op = code[at]
        if op in NEW_OPCODES:
            name, since = NEW_OPCODES[op]
            if EVM_VERSIONS.index(since) > runs:
                found.append((at, name, since))
        at += 1 + (op - _PUSH1 + 1 if _PUSH1 <= op <= _PUSH32 else 0)
    return found


def check_bytecode(artifact: Artifact, evm_version: str, client: str) -> None:
    """``ValueError`` naming the first opcode the chain cannot run, and the fix."""
    bad = unsupported_opcodes(artifact.bytecode, evm_version)
    if not bad:
        return
    offset, name, since = bad[0]
    others = sorted({n for _, n, _ in bad[1:]} - {name})
    also = f" (also {', '.join(others)})" if others else ""
    raise ValueError(
        f"{artifact.name} uses {name} at byte {offset}{also}, which needs EVM {since}; "
        f"this chain ({client}) runs {evm_version}. Compile for {evm_version}: solc "
        f'--evm-version {evm_version}, settings.evmVersion "{evm_version}" (standard JSON, '
        f'Hardhat), evm_version = "{evm_version}" (foundry.toml); chain.compile does so.'
    )


# -- deploy -----------------------------------------------------------------------------------


def deploy(
    chain: Chain,
    artifact: str | os.PathLike[str] | Mapping[str, Any],
    args: Sequence[Any],
    *,
    sender: LocalAccount | None,
    node: Node,
    timeout: float,
) -> Contract:
    """See ``Chain.deploy``. Everything that can be checked is checked before a
    transaction is signed: the artifact, the opcodes, the constructor arguments, and
    (by estimating its gas) whether the constructor reverts."""
    art = load_artifact(artifact)
    check_bytecode(art, chain.adapter.evm_version(node._spec), chain.client)
    w3 = node.w3
    factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    account = sender if sender is not None else chain.fresh_account()
    # Every field given: web3 only encodes the constructor call, it asks the node nothing.
    offline: dict[str, Any] = {
        "from": account.address, "gas": 1, "nonce": 0, "chainId": chain.chain_id, "value": 0,
        "maxFeePerGas": 1, "maxPriorityFeePerGas": 1,
    }  # fmt: skip
    try:
        data = factory.constructor(*args).build_transaction(offline)["data"]
    except (MismatchedABI, Web3ValidationError, TypeError, ValueError) as exc:
        raise TypeError(
            f"{art.name}'s constructor({_inputs(art.abi)}) does not take {list(args)!r}: {exc}"
        ) from None
    try:
        gas = w3.eth.estimate_gas({"from": account.address, "data": HexBytes(data)})
    except ContractLogicError as exc:
        raise ContractLogicError(
            f"{art.name}'s constructor reverts: {exc.message or exc}", data=exc.data
        ) from None
    tx_hash = chain.send_signed(account, {"data": data, "gas": gas + gas // 5}, node=node)
    receipts = chain.wait_for_tx(tx_hash, timeout=timeout)
    receipt = receipts[node.name] if node.name in receipts else next(iter(receipts.values()))
    if receipt["status"] != 1:
        raise ContractLogicError(
            f"{art.name}'s deploy {tx_hash.to_0x_hex()} failed in block "
            f"{receipt['blockNumber']} (status 0, gas used {receipt['gasUsed']} of {gas})"
        )
    address = receipt["contractAddress"]
    if address is None:
        raise ChainHarnessError(f"the receipt of deploy {tx_hash.to_0x_hex()} names no contract")
    # The receipt is in one block on every running node; the code is there too.
    for other in chain.running_nodes():
        if not other.w3.eth.get_code(address):
            raise ChainHarnessError(f"{other.name} has no code at {address} after its receipt")
    chain.deployed[address.lower()] = int(receipt["blockNumber"])
    bound: Contract = chain.nodes[0].w3.eth.contract(address=address, abi=art.abi)
    return bound


def _inputs(abi: list[dict[str, Any]]) -> str:
    for entry in abi:
        if entry.get("type") == "constructor":
            inputs = entry.get("inputs", [])
            return ", ".join(f"{i['type']} {i.get('name', '')}".strip() for i in inputs)
    return ""


# -- watch ------------------------------------------------------------------------------------


def watch(chain: Chain, contract: Contract, event: str | None, *, timeout: float) -> None:
    """See ``Chain.watch``."""
    bus = chain.bus
    if bus is None:
        raise ChainHarnessError("chain.watch needs the run's bus (this run has none)")
    events: list[dict[str, Any]] = [dict(e) for e in contract.abi if e.get("type") == "event"]
    names = [str(e["name"]) for e in events]
    if event is not None and event not in names:
        raise ValueError(
            f"contract {contract.address} has no event {event!r} in its ABI; "
            f"its events: {', '.join(names) or 'none'}"
        )
    if not events:
        raise ValueError(f"contract {contract.address} has no events in its ABI")
    address = contract.address.lower()
    since = chain.deployed.get(address)
    if since is None:
        since = chain.nodes[0].head().number
    bus.register_kind("log")
    bus.register_kind("watching")
    bus.request_watch(
        f"{address}-{event or 'all'}",
        {"address": address, "events": events, "only": event, "from_block": since},
    )
    running = [n.name for n in chain.running_nodes()]
    # Each agent says so once it has published the logs up to its head: from then on a
    # log on any node reaches the bus.
    bus.wait_for(
        "watching",
        lambda e: e.payload.get("address") == address and e.payload.get("only") == event,
        nodes=running,
        timeout=timeout,
    )

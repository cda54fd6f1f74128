"""The resolved network description: deterministic from the seed, checked on build."""

from __future__ import annotations

import pytest

from pytest_chainharness import build_testnet
from pytest_chainharness.clients.geth import genesis, is_signer, signer_address, signers


def test_same_seed_same_keys_and_accounts() -> None:
    a = build_testnet(nodes=4, client="geth", period=1, seed=123, accounts=16)
    b = build_testnet(nodes=4, client="geth", period=1, seed=123, accounts=16)
    assert [n.identity for n in a.nodes] == [n.identity for n in b.nodes]
    assert all(n.identity["node_key"] and n.identity["signer_key"] for n in a.nodes)
    assert a.account_addresses() == b.account_addresses()


def test_other_seed_other_keys() -> None:
    a = build_testnet(nodes=2, client="geth", period=1, seed=1, accounts=4)
    b = build_testnet(nodes=2, client="geth", period=1, seed=2, accounts=4)
    assert not set(a.account_addresses()) & set(b.account_addresses())
    assert a.nodes[0].identity["node_key"] != b.nodes[0].identity["node_key"]


def test_ports_are_distinct_and_loopback() -> None:
    net = build_testnet(nodes=8, client="geth", period=1, seed=5, accounts=1)
    ports = [p for n in net.nodes for p in n.ports.values()]
    assert all(set(n.ports) == {"rpc", "ws", "p2p", "authrpc", "metrics"} for n in net.nodes)
    assert len(set(ports)) == len(ports) == 40
    assert all(n.rpc_url.startswith("http://127.0.0.1:") for n in net.nodes)


def test_genesis_lists_signers_and_funds_accounts() -> None:
    net = build_testnet(nodes=3, client="geth", period=2, seed=9, accounts=10, signers=2)
    doc = genesis(net)
    extra = doc["extradata"][2:]
    assert len(extra) == 2 * (32 + 2 * 20 + 65)
    sealers = {extra[64 + 40 * i : 64 + 40 * (i + 1)] for i in range(2)}
    assert sealers == {signer_address(n)[2:].lower() for n in net.nodes[:2]}
    assert not is_signer(net.nodes[2])
    assert doc["config"]["clique"]["period"] == 2
    assert set(net.account_addresses()) == set(doc["alloc"])
    # Unlocked to seal, a signer's own account must hold nothing but the fees it earns.
    assert not {signer_address(n) for n in signers(net)} & set(doc["alloc"])


def test_the_testnet_carries_a_clients_identity_without_reading_it() -> None:
    """A client without keys of the harness's (a spec client) has none; nothing asks a
    network for a signer."""
    net = build_testnet(nodes=3, client="cometbft", period=1, seed=4, accounts=1)
    assert [n.identity for n in net.nodes] == [{}, {}, {}]
    assert [set(n.ports) for n in net.nodes] == [{"p2p", "rpc", "metrics"}] * 3
    assert type(net).from_dict(net.to_dict()).to_dict() == net.to_dict()


def test_round_trip_through_dict() -> None:
    net = build_testnet(nodes=2, client="geth", period=1, seed=3, accounts=2)
    again = type(net).from_dict(net.to_dict())
    assert again.to_dict() == net.to_dict()
    assert again.account_addresses() == net.account_addresses()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"nodes": 0}, "nodes must be >= 1"), ({"nodes": 2, "signers": 3}, "signers must be 1..2")],
)
def test_bad_descriptions(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_testnet(client="geth", period=1, seed=1, **kwargs)  # type: ignore[arg-type]


def test_packet_filter_tables() -> None:
    from pytest_chainharness.providers._netfilter import rules_for

    ips = {0: "10.0.0.10", 1: "10.0.0.11", 2: "10.0.0.12", 3: "10.0.0.13"}
    healed = rules_for(0, [], ips)
    assert "-j DROP" not in healed  # no partition: nothing dropped
    split = rules_for(0, [[0, 1], [2, 3]], ips)
    assert "-A OUTPUT -d 10.0.0.12/32 -j DROP" in split
    assert "-A INPUT -s 10.0.0.13/32 -j DROP" in split
    assert "10.0.0.11" not in split
    lossy = rules_for(0, [], ips, loss=0.25, subnet="10.0.0.0/24", keep_ports=[8545, 8546])
    assert (
        "-A OUTPUT -p tcp -d 10.0.0.0/24 -m multiport ! --sports 8545,8546 -m statistic "
        "--mode random --probability 0.250000 -j DROP"
    ) in lossy


def test_two_allocators_never_hand_out_one_port() -> None:
    """A network's node ports, its link proxies' ports and fresh ports after a conflict
    come from different allocators; a port given but not yet bound is free to the kernel.
    With one set per allocator, 2 x 2000 ports overlapped by about a hundred."""
    from pytest_chainharness._ports import PortAllocator

    first = PortAllocator().take(2000)
    second = PortAllocator().take(2000)
    assert len(set(first)) == len(set(second)) == 2000
    assert not set(first) & set(second)


def test_a_port_held_on_another_address_is_not_handed_out() -> None:
    """A docker run's link proxies listen on its network's gateway; another xdist
    worker's allocator, probing 127.0.0.1 only, gave a process node that same number,
    and the exposure test found the node's port listening on the gateway."""
    import socket

    from pytest_chainharness._ports import PortAllocator

    with socket.create_server(("127.0.0.2", 0)) as elsewhere:
        held = elsewhere.getsockname()[1]
        assert PortAllocator(window=range(held, held + 1)).take(1) != [held]


def test_no_ports_asked_none_given() -> None:
    """A 1-node network has no peer links: asking for 0 ports used to open sockets until
    the process ran out of files."""
    from pytest_chainharness._ports import PortAllocator

    assert PortAllocator().take(0) == []


def test_node_ports_are_outside_the_ephemeral_range() -> None:
    """A port inside the kernel's ephemeral range becomes the local end of some outgoing
    connection while its node is stopped; Docker then failed the node's restart with
    "address already in use"."""
    from pytest_chainharness._ports import PortAllocator, ephemeral_range

    low, high = ephemeral_range()
    ports = PortAllocator().take(500)
    assert len(set(ports)) == 500
    assert not [port for port in ports if low <= port <= high]


def test_an_outgoing_connection_holds_its_local_port_against_a_listener() -> None:
    """The mechanism the window avoids: the local port of a connection cannot be bound."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    taken = client.getsockname()[1]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's net.Listen
    try:
        with pytest.raises(OSError, match="Address already in use"):
            listener.bind(("127.0.0.1", taken))
    finally:
        for sock in (listener, client, server):
            sock.close()


@pytest.mark.parametrize(
    ("ephemeral", "window"),
    [
        ((32768, 60999), range(20000, 30000)),
        ((25000, 60999), range(20000, 25000)),
        ((10000, 22000), range(22001, 30000)),
        ((1024, 65535), range(0)),
    ],
)
def test_port_window_avoids_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch, ephemeral: tuple[int, int], window: range
) -> None:
    from pytest_chainharness import _ports

    monkeypatch.setattr(_ports, "ephemeral_range", lambda: ephemeral)
    assert _ports.port_window() == window


def test_a_full_window_falls_back_to_the_kernels_choice() -> None:
    from pytest_chainharness._ports import PortAllocator

    ports = PortAllocator(window=range(0)).take(3)
    assert len(set(ports)) == 3

"""A team's own node from a client spec file: a replicated counter (not a blockchain)
run as a network, and a spec's mistakes at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_docker import run_objects
from tests.test_lifecycle import assert_nothing_left

pytestmark = pytest.mark.usefixtures("mosquitto_required")

COUNTER = Path(__file__).resolve().parent / "specnodes" / "counter.yaml"

RUN = """
import pytest
from pytest_chainharness import UnsupportedAction


def test_heads_waits_bus_and_faults(chain, bus):
    assert chain.client == "counter"
    chain.wait_for_height(5)
    head = chain.wait_converged()
    assert head.number >= 5 and head.hash.startswith("0x")
    assert set(chain.heads()) == {"node0", "node1", "node2"}
    events = bus.wait_for("block", lambda e: e.payload["number"] >= head.number, nodes="all")
    assert {e.node for e in events} == {"node0", "node1", "node2"}
    assert {e.payload["count"] for e in bus.wait_for("peers", nodes="all")} == {2}
    node2 = chain.nodes[2]
    node2.kill()
    assert not node2.running
    chain.wait_for_height(head.number + 3, nodes=[0, 1])
    node2.start()
    again = chain.wait_converged(timeout=30)
    assert again.number >= head.number + 3
    # The replica caught up through the counter's own replication, and said so.
    assert bus.wait_for("block", lambda e: e.payload["number"] >= again.number, nodes=["node2"])
    faults = [e.payload["action"] for e in bus.events("fault", node="node2")]
    assert faults[-2:] == ["kill", "start"]
    assert set(chain.nodes[0].ports) == {"rpc"}
    assert chain.nodes[0].url() == chain.nodes[0].rpc_url


def test_latency_through_the_link_proxies(chain):
    import time
    import urllib.request

    links = chain.provider.shared.load()["links"]
    host = chain.provider.link_routes(1)[0].host

    def took(link):
        start = time.monotonic()
        urllib.request.urlopen(f"http://{host}:{links[link]}/status", timeout=10).read()
        return time.monotonic() - start

    with chain.latency(1, 600) as how:
        assert how == "toxiproxy"
        assert took("link-1-0-rpc") >= 0.6  # node1 asks node0: what node1 sends
        assert took("link-0-1-rpc") >= 0.6  # node0 asks node1: node1's answer
        assert took("link-2-0-rpc") < 0.5  # nothing of node1's
    assert took("link-1-0-rpc") < 0.5
    chain.wait_converged(timeout=30)


def test_ethereum_calls_name_the_client(chain):
    with pytest.raises(UnsupportedAction, match="client counter is not an Ethereum chain"):
        chain.nodes[0].w3
    with pytest.raises(UnsupportedAction, match="transfer: client counter"):
        chain.transfer(None, "0x0", 1)
    with pytest.raises(UnsupportedAction, match="packet loss"):
        chain.add_latency(1, 100, loss=0.1)


"""
PARTITION = """

def test_a_partition_through_the_link_proxies(chain):
    before = chain.wait_converged().number
    with chain.partition([0], [1, 2]) as how:
        assert how == "proxies"
        chain.wait_for_height(before + 5, nodes=[0])
        heads = {name: head.number for name, head in chain.heads().items()}
        # Only node0 counts; the others cannot reach it.
        assert heads["node1"] < heads["node0"] - 2, heads
        assert heads["node2"] < heads["node0"] - 2, heads
    assert chain.wait_converged(timeout=30).number >= before + 5


"""
NO_ACCOUNTS = """

def test_no_funded_accounts(funded_account):
    pass
"""


def test_a_replicated_counter_runs_as_a_network(inner: pytest.Pytester, runs_dir: Path) -> None:
    inner.makepyfile(test_counter=RUN + PARTITION + NO_ACCOUNTS)
    result = inner.runpytest_subprocess(f"--chain-client={COUNTER}", "--chain-nodes=3")
    result.stdout.fnmatch_lines(["chainharness: 3 node(s), client counter *counter.py)"])
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*UnsupportedAction: funded_account: client counter is not*"])
    assert_nothing_left(runs_dir)


DOCKER_RUN = RUN.split("def test_ethereum_calls_name_the_client")[0]


@pytest.mark.usefixtures("docker_required")
def test_the_counter_on_docker_with_the_hosts_script(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    """No ``image:``: the host's binary (a Python script) at its host path in an image
    that can run it; partitions on docker go through the link proxies too."""
    inner.makepyfile(test_counter=DOCKER_RUN + PARTITION)
    result = inner.runpytest_subprocess(
        f"--chain-client={COUNTER}",
        "--chain-nodes=3",
        "--chain-backend=docker",
        "--chain-image=chainharness/python:3.11",
    )
    result.stdout.fnmatch_lines(
        ["chainharness: 3 node(s), client counter *counter.py on image chainharness/python:3.11)"]
    )
    result.assert_outcomes(passed=3)
    assert_nothing_left(runs_dir)


@pytest.mark.usefixtures("docker_required")
def test_a_spec_image_carries_the_binary_and_runs_the_set_up(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    """With ``image:`` the binary is the image's, and node_init and node_id run in one-off
    containers of it (the host has no ``counter`` at all)."""
    import docker

    client = docker.from_env()
    tag = "chainharness-test/counter:1"
    context = inner.path / "image"
    context.mkdir()
    (context / "counter").write_bytes((COUNTER.parent / "counter.py").read_bytes())
    (context / "Dockerfile").write_text(
        "FROM chainharness/python:3.11\nCOPY counter /opt/counter/bin/counter\n"
        "RUN chmod 755 /opt/counter/bin/counter\n"
    )
    client.images.build(path=str(context), tag=tag, rm=True)
    try:
        text = COUNTER.read_text().replace("counter.py", "counter")
        text = text.replace("binary: counter", f"binary: /opt/counter/bin/counter\nimage: {tag}")
        spec = inner.path / "counter-image.yaml"
        spec.write_text(text)
        inner.makepyfile(test_counter=DOCKER_RUN)
        result = inner.runpytest_subprocess(
            f"--chain-client={spec}", "--chain-nodes=3", "--chain-backend=docker"
        )
        result.stdout.fnmatch_lines([f"chainharness: 3 node(s), client counter (image {tag})*"])
        result.assert_outcomes(passed=2)
        assert_nothing_left(runs_dir)
        # The set-up containers are gone with the run (this run's only: under xdist another
        # worker's network may be up meanwhile).
        assert run_objects(runs_dir) == []
    finally:
        client.images.remove(tag, force=True)
        client.close()


def spec_variant(folder: Path, old: str, new: str) -> Path:
    """The counter spec with ``old`` replaced, written where its binary is not: so
    ``binary:`` names the script by its full path (unless the variant rewrote it)."""
    text = COUNTER.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    text = text.replace("binary: counter.py", f"binary: {COUNTER.parent / 'counter.py'}")
    path = folder / "variant.yaml"
    path.write_text(text)
    return path


def test_a_start_command_that_exits_at_once(inner: pytest.Pytester, runs_dir: Path) -> None:
    spec = spec_variant(
        inner.path,
        "start: [counter.py, --home",
        'start: [sh, -c, "echo no such flag; exit 3", --home',
    )
    inner.makepyfile("def test_it(chain):\n    pass\n")
    result = inner.runpytest_subprocess(f"--chain-client={spec}", "--chain-nodes=2")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "exited" in out, out[-3000:]
    assert "no such flag" in out, out[-3000:]
    assert "sh -c 'echo no such flag; exit 3'" in out, out[-3000:]
    assert_nothing_left(runs_dir)


def test_a_head_path_not_in_the_answer_shows_the_answer(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    spec = spec_variant(inner.path, "  height: height\n", "  height: result.height\n")
    inner.makepyfile("def test_it(chain):\n    pass\n")
    result = inner.runpytest_subprocess(
        f"--chain-client={spec}", "--chain-nodes=2", "-o", "chain_start_timeout=8"
    )
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "'result.height' is not in the answer (at 'result')" in out, out[-3000:]
    assert '"height":' in out, out[-3000:]
    assert_nothing_left(runs_dir)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("ports: [rpc]", "ports: [rpc]\nportz: 1", "variant.yaml:5: portz: unknown key"),
        ('"{port.rpc}"', '"{port.grpc}"', "no port named 'grpc'"),
        ("binary: counter.py", "binary: /nonexistent/counter", "binary: '/nonexistent/counter'"),
    ],
)
def test_a_bad_spec_is_a_usage_error(
    inner: pytest.Pytester, runs_dir: Path, old: str, new: str, message: str
) -> None:
    spec = spec_variant(inner.path, old, new)
    inner.makepyfile("def test_it(chain):\n    pass\n")
    result = inner.runpytest_subprocess(f"--chain-client={spec}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str(), result.stderr.str()
    assert not runs_dir.exists() or not list(runs_dir.glob("*/nodes"))


ADAPTER = """
from pytest_chainharness.clients.spec_client import SpecAdapter


class CounterAdapter(SpecAdapter):
    \"\"\"What YAML cannot say: here, only a name of its own.\"\"\"

    def __init__(self, spec, root=None, name=""):
        super().__init__(spec, root=root, name=name)
        self.display_name = "counter-by-adapter"
"""


def test_a_spec_names_a_python_adapter(inner: pytest.Pytester, runs_dir: Path) -> None:
    spec = spec_variant(
        inner.path,
        "client: counter\n",
        "client: counter\nadapter: counter_adapter:CounterAdapter\n",
    )
    (inner.path / "counter_adapter.py").write_text(ADAPTER)
    inner.makepyfile("def test_it(chain):\n    assert chain.client == 'counter-by-adapter'\n")
    result = inner.runpytest_subprocess(f"--chain-client={spec}", "--chain-nodes=2")
    result.stdout.fnmatch_lines(["chainharness: 2 node(s), client counter-by-adapter *"])
    result.assert_outcomes(passed=1)
    assert_nothing_left(runs_dir)


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ("no_such_module:X", "does not load: ModuleNotFoundError"),
        ("counter_adapter:Missing", "does not load: AttributeError"),
        ("counter_adapter:SpecAdapter", None),
        ("json:JSONDecoder", "is not a subclass of pytest_chainharness SpecAdapter"),
    ],
)
def test_a_spec_adapter_that_does_not_load_is_a_usage_error(
    inner: pytest.Pytester, runs_dir: Path, adapter: str, message: str | None
) -> None:
    spec = spec_variant(inner.path, "client: counter\n", f"client: counter\nadapter: {adapter}\n")
    (inner.path / "counter_adapter.py").write_text(ADAPTER)
    inner.makepyfile("def test_it(chain):\n    pass\n")
    result = inner.runpytest_subprocess(f"--chain-client={spec}", "--chain-nodes=2")
    if message is None:  # the base class itself is a valid adapter
        result.assert_outcomes(passed=1)
        return
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"variant.yaml: adapter: {adapter} {message}" in result.stderr.str(), result.stderr.str()
    assert not runs_dir.exists() or not list(runs_dir.glob("*/nodes"))


def test_cli_up_attach_status_down(inner: pytest.Pytester, runs_dir: Path) -> None:
    import subprocess
    import sys

    chainharness = str(Path(sys.executable).parent / "chainharness")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [chainharness, *args], cwd=inner.path, capture_output=True, text=True, timeout=120
        )

    up = cli("up", f"--chain-client={COUNTER}", "--chain-nodes=2")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert "2 node(s) up on process" in up.stdout
        state = inner.path / ".chainharness" / "state.json"
        inner.makepyfile(
            "def test_attached(chain):\n"
            "    assert chain.client == 'counter'\n"
            "    chain.wait_for_height(3)\n"
            "    chain.wait_converged()\n"
        )
        result = inner.runpytest_subprocess(f"--chain-attach={state}")
        result.assert_outcomes(passed=1)
        status = cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "node1  running" in status.stdout
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(runs_dir)
    bad = spec_variant(inner.path, "ports: [rpc]", "ports: [rpc]\nportz: 1")
    refused = cli("up", f"--chain-client={bad}")
    assert refused.returncode == 2
    assert "variant.yaml:5: portz: unknown key" in refused.stdout


def test_a_command_readiness_probe_runs_the_spec_binary(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    # Beside its own copy of the script, found relative to the spec (not on PATH): the
    # probe's argv[0] must become that path, as every other command's does.
    script = inner.path / "counter.py"
    script.write_text((COUNTER.parent / "counter.py").read_text())
    script.chmod(0o755)
    ready = 'ready:\n  http: "http://{host}:{port.rpc}/status"\n'
    text = COUNTER.read_text()
    assert ready in text
    spec = inner.path / "ready.yaml"
    spec.write_text(text.replace(ready, "ready:\n  command: [counter.py, --help]\n"))
    inner.makepyfile("def test_it(chain):\n    chain.wait_for_height(3)\n")
    result = inner.runpytest_subprocess(f"--chain-client={spec}", "--chain-nodes=2")
    result.assert_outcomes(passed=1)
    assert_nothing_left(runs_dir)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_cli_up_killed_while_starting_leaves_nothing(
    inner: pytest.Pytester, runs_dir: Path, sig: str
) -> None:
    """A kept network has no watchdog before its state file exists: ``up`` stopped by a
    CI timeout or a closed terminal mid-start must remove what it started (it left 31
    nodes of a 32-node start running)."""
    import signal
    import subprocess
    import sys
    import time

    chainharness = str(Path(sys.executable).parent / "chainharness")
    up = subprocess.Popen(
        [chainharness, "up", f"--chain-client={COUNTER}", "--chain-nodes=3"],
        cwd=inner.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(runs_dir.glob("*/logs/node2.log")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.poll() is None, up.communicate()[0]
    up.send_signal(getattr(signal, sig))
    out, _ = up.communicate(timeout=60)
    assert up.returncode == 130, out
    assert "interrupted while starting" in out, out
    assert_nothing_left(runs_dir)
    assert not (inner.path / ".chainharness" / "state.json").exists()

"""pytest entry point: options, marks, fixtures and the xdist hand-off. Wiring only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ._allure import AllurePlugin, allure_dir
from ._errors import ChainHarnessError, ToolNotFound
from ._gate import (
    GatePlugin,
    add_gate_options,
    claim_report,
    infra_fail,
    item_stage,
    read_gate_settings,
    withhold_key,
)
from ._load import LoadResult, LoadTestRunner, Slo, parse_slo
from ._options import add_options, read_settings
from ._report import ReportPlugin
from ._runlogs import keep_run_logs, kept_logs_dir
from ._session import SESSION_KEY, ChainSession, RunInfo
from .chain import Chain
from .clients import get_client
from .providers import get_backend, resolve_backend

if TYPE_CHECKING:
    from .bus import SyncBus
    from .services import Services

_SESSION_KEY = SESSION_KEY
_ALLURE_KEY = pytest.StashKey[AllurePlugin | None]()
_SLO_KEY = pytest.StashKey[list[Slo]]()
_REPORT_KEY = pytest.StashKey[ReportPlugin | None]()
#: How many repairs the chain had made when the test started.
_REPAIRS_KEY = pytest.StashKey[int]()

MARKERS = (
    "chain(min_nodes=None, client=None): skip unless the run's network has at least "
    "min_nodes nodes and runs the given client",
    "stage(name): the earliest deploy stage this test must pass for",
    "disruptive: the test breaks the network; the harness restores it afterwards",
)


# -- options and configuration ---------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    add_gate_options(parser)
    parser.addini(
        "chain_load_slo",
        "SLOs every load_test checks, one per line, e.g. 'p95(eth_sendRawTransaction) <= 250ms'",
        type="linelist",
    )


def read_slos(config: pytest.Config) -> list[Slo]:
    try:
        return [parse_slo(text) for text in config.getini("chain_load_slo")]
    except ValueError as exc:
        raise pytest.UsageError(f"ini chain_load_slo: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    # First of all: no check below may fail while an earlier promote is still in place.
    claim_report(config)
    gate_key = withhold_key(config)
    settings = read_settings(config)
    gate_settings = read_gate_settings(config)
    config.stash[_SLO_KEY] = read_slos(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and "chainharness_run_id" in workerinput:
        run = RunInfo.from_workerinput(workerinput)
        session = ChainSession(settings, run, owner=False, root=config.rootpath)
        config.add_cleanup(session.leave)
    else:
        run = RunInfo.new(settings)
        session = ChainSession(settings, run, owner=True, root=config.rootpath)
        config.add_cleanup(lambda: _finish(config, session))
    config.stash[_SESSION_KEY] = session
    config.pluginmanager.register(
        GatePlugin(
            config,
            gate_settings,
            owner=session.owner,
            describe_chain=session.describe,
            key=gate_key,
        ),
        "chainharness-gate",
    )
    reporter = None
    if allure_dir(config) is not None:
        reporter = AllurePlugin(
            config, session, owner=session.owner, stage_of=item_stage, target=gate_settings.target
        )
        config.pluginmanager.register(reporter, "chainharness-allure")
    config.stash[_ALLURE_KEY] = reporter
    run_report = None
    if settings.report is not None:
        run_report = ReportPlugin(
            config,
            session,
            settings.report,
            attach=reporter is not None,
            uses_network=_uses_network,
        )
        config.pluginmanager.register(run_report, "chainharness-report")
    config.stash[_REPORT_KEY] = run_report
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(session), "chainharness-xdist")


class _XdistHooks:
    """Controller-side xdist hooks, registered only when xdist is active."""

    def __init__(self, session: ChainSession) -> None:
        self.session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput.update(self.session.run.to_workerinput())


def _finish(config: pytest.Config, session: ChainSession) -> None:
    record = session.network_record()
    if session.settings.keep and record is not None and record.get("status") == "up":
        _print_kept(config, record)
        return
    session.teardown()
    kept = _kept_logs(config, session)
    if kept is not None:
        keep_run_logs(session.run.run_dir, kept)


def _kept_logs(config: pytest.Config, session: ChainSession) -> Path | None:
    """Where this run's logs are kept (a test failed, or --chain-keep-logs), else None."""
    if not session.owner or session.network_record() is None:
        return None
    if not (session.any_failed or session.settings.keep_logs):
        return None
    return kept_logs_dir(config.rootpath, session.run.run_id)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    chain_session = session.config.stash.get(_SESSION_KEY, None)
    if chain_session is not None:
        chain_session.any_failed = bool(session.testsfailed) or exitstatus in (
            pytest.ExitCode.TESTS_FAILED,
            pytest.ExitCode.INTERRUPTED,
            pytest.ExitCode.INTERNAL_ERROR,
        )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    kept = None if session is None else _kept_logs(config, session)
    if kept is not None:
        terminalreporter.write_line(
            f"chainharness: this run's logs are kept in {kept} "
            "(node and agent logs, events.jsonl, state file)"
        )


def _print_kept(config: pytest.Config, record: dict[str, Any]) -> None:
    provider = record["provider"]
    lines = ["chainharness: --chain-keep: the network is still running"]
    for node in provider["testnet"]["nodes"]:
        lines.append(f"  {node['name']}: http://{node['host']}:{node['ports']['rpc']}")
    lines.append(f"  logs: {provider['run_dir']}/logs")
    state = Path(provider["run_dir"]) / "network.json"
    lines.append(f"  use it: pytest --chain-attach={state}")
    # The interpreter's own path: the chainharness script need not be on PATH.
    lines.append(f"  stop it: {sys.executable} -m pytest_chainharness.cli down --state {state}")
    text = "\n".join(lines)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(text)
    else:
        print(text)


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash.get(_SESSION_KEY, None)
    if session is None or not session.owner:
        return []
    s = session.settings
    if s.attach is not None:
        return [f"chainharness: attached to the network in {s.attach} (not started or stopped)"]
    adapter = get_client(s.client, root=config.rootpath)
    backend, why = resolve_backend(s.backend, s.image, adapter)
    images = get_backend(backend).runs_images
    if images and not adapter.host_binary:
        client = f"{adapter.display_name} (image {s.image})"
    else:
        try:
            binary = adapter.find_binary(explicit=s.binary)
            # A host binary on an image backend runs mounted into the image: name both.
            where = f"{binary} on image {s.image}" if images else str(binary)
            client = f"{adapter.display_name} {adapter.version(binary)} ({where})"
        except ToolNotFound as exc:
            client = f"{s.client} NOT FOUND: {exc}"
    lines = [
        f"chainharness: {s.nodes} node(s), client {client}",
        f"chainharness: backend {backend} ({why}), period {s.period}s, "
        f"seed {session.run.seed} (replay: --chain-seed={session.run.seed}), "
        f"run {session.run.run_id}",
    ]
    if s.services is not None:
        lines.append(f"chainharness: services from {s.services}")
    return lines


# -- marks -----------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[_SESSION_KEY].settings
    for item in items:
        for mark in item.iter_markers("chain"):
            reason = _chain_mark_unmet(mark, settings.nodes, settings.client)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _chain_mark_unmet(mark: pytest.Mark, nodes: int, client: str) -> str | None:
    unknown = set(mark.kwargs) - {"min_nodes", "client"}
    if mark.args or unknown:
        raise pytest.UsageError(
            f"@pytest.mark.chain takes only min_nodes= and client=, got "
            f"{', '.join([repr(a) for a in mark.args] + sorted(unknown))}"
        )
    min_nodes = mark.kwargs.get("min_nodes")
    if min_nodes is not None and nodes < int(min_nodes):
        return f"needs at least {min_nodes} nodes; this run has {nodes} (--chain-nodes={nodes})"
    wanted = mark.kwargs.get("client")
    # One name, or any of several (the clients a test's feature exists on).
    names = [wanted] if isinstance(wanted, str) else list(wanted or ())
    if wanted is not None and client not in names:
        return (
            f"needs client {' or '.join(names)}; this run uses {client} (--chain-client={client})"
        )
    return None


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml"):
        from .scenario import is_scenario, looks_like_scenario

        if is_scenario(file_path) or looks_like_scenario(file_path):
            from .scenario.collect import ScenarioFile

            found: pytest.Collector = ScenarioFile.from_parent(parent, path=file_path)
            return found
    return None


def _uses_network(item: pytest.Item) -> bool:
    # The fixture closure: load_test, bus, w3 and funded_account all bring chain.
    names = getattr(item, "fixturenames", ())
    return "chain" in names or item.get_closest_marker("disruptive") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _uses_network(item):
        exclusive = item.get_closest_marker("disruptive") is not None
        item.config.stash[_SESSION_KEY].network_lock.acquire(exclusive=exclusive)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    session = item.config.stash[_SESSION_KEY]
    try:
        return (yield)
    finally:
        try:
            if item.get_closest_marker("disruptive") is not None:
                session.restore()
        finally:
            session.network_lock.release()


# -- fixtures --------------------------------------------------------------------------------


def _session(request: pytest.FixtureRequest) -> ChainSession:
    return request.config.stash[_SESSION_KEY]


@pytest.fixture(scope="session")
def chain(request: pytest.FixtureRequest) -> Chain:
    """The running network, started on first use and shared by all xdist workers."""
    reporter = request.config.stash[_ALLURE_KEY]
    run_report = request.config.stash[_REPORT_KEY]
    try:
        if reporter is None:
            started = _session(request).chain()
        else:
            with reporter.network_step():
                started = _session(request).chain()
            reporter.watch(started)
        if run_report is not None:
            run_report.recorder.watch(started)
        return started
    except ChainHarnessError as exc:
        failure = f"{type(exc).__name__}: {exc}"
    # The message says what to do (install command, node log tail); a traceback through
    # the harness, or the error printed twice as a chained exception, would only bury it.
    # It is an infrastructure failure: the gate counts it apart from product failures.
    infra_fail(failure)
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture(scope="session")
def services(chain: Chain, request: pytest.FixtureRequest) -> Services:
    """The containers started beside the chain (``--chain-services``)."""
    found = _session(request).services
    if found is None:
        pytest.fail(
            "the services fixture needs a services file: --chain-services=FILE "
            "(or ini chain_services)",
            pytrace=False,
        )
    services: Services = found
    return services


@pytest.fixture(scope="session")
def bus(chain: Chain, request: pytest.FixtureRequest) -> SyncBus:
    """The run's event bus (``SyncBus``), connected to the run's broker."""
    session = _session(request)
    if session.bus is None:
        pytest.fail(f"the event bus is not available: {session.bus_error}", pytrace=False)
    found: SyncBus = session.bus
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    session = item.config.stash.get(_SESSION_KEY, None)
    if report.failed and session is not None and session.bus is not None:
        report.sections.append(("chainharness events", session.bus.last_events_table(5)))
    chain = session.current_chain if session is not None else None
    if chain is not None and call.when in ("call", "teardown"):
        # A wait that repaired a client stall says so in the test's report: the test
        # passed with the harness's help (--chain-repair=off shows it without).
        start = item.stash.get(_REPAIRS_KEY, 0)
        made = chain.repairs[start:]
        item.stash[_REPAIRS_KEY] = len(chain.repairs)
        if made:
            name = "chainharness repairs" + (" (teardown)" if call.when == "teardown" else "")
            report.sections.append((name, "\n".join(made)))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    session = item.config.stash.get(_SESSION_KEY, None)
    chain = session.current_chain if session is not None else None
    item.stash[_REPAIRS_KEY] = len(chain.repairs) if chain is not None else 0


@pytest.fixture
def load_test(chain: Chain, request: pytest.FixtureRequest) -> LoadTestRunner:
    """Run locust (in a child process) against the chain: ``load_test(users=20,
    spawn_rate=10, run_time="20s", profile="transfer", slo=[...]) -> LoadResult``."""

    def report(text: str) -> None:
        request.node.add_report_section("call", "load", text)

    def on_result(result: LoadResult) -> None:
        run_report = request.config.stash[_REPORT_KEY]
        if run_report is not None:
            run_report.on_load(result)
        allure_plugin = request.config.stash[_ALLURE_KEY]
        if allure_plugin is not None:
            allure_plugin.attach_load(result)

    return LoadTestRunner(_session(request), request.config.stash[_SLO_KEY], report, on_result)


@pytest.fixture
def w3(chain: Chain) -> Web3:
    """web3 on node 0."""
    return chain.nodes[0].w3


@pytest.fixture
def funded_account(chain: Chain, request: pytest.FixtureRequest) -> LocalAccount:
    """A genesis-funded account never handed to another test of this run."""
    return _session(request).funded_account()


def chain_artifacts(config: pytest.Config) -> Path:
    """Where this run keeps node logs (for reports and debugging)."""
    return config.stash[_SESSION_KEY].run.run_dir / "logs"

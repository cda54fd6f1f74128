"""Genesis accounts, handed out once each across every process that uses a network.

A counter file under a file lock is shared by all of them: for a run's own network, by
the xdist workers (replacements of crashed ones too: they claim from the same counter,
so they get accounts no live worker has); for a network that outlives sessions
(``chainharness up``), by ``pytest --chain-attach`` sessions and load users. No two of
them ever sign with the same account.
"""

from __future__ import annotations

from pathlib import Path

from eth_account.signers.local import LocalAccount
from filelock import FileLock

from ._errors import ChainHarnessError
from ._testnet import Testnet

__all__ = [
    "ATTACHED_FIRST",
    "ATTACHED_FIXED_SLOTS",
    "FIXED_ACCOUNTS",
    "claim",
    "claim_attached",
]

#: Genesis accounts each session (xdist worker) keeps as ``chain.accounts``.
FIXED_ACCOUNTS = 8
#: Attached sessions: this many slots of FIXED_ACCOUNTS come first, by worker index.
ATTACHED_FIXED_SLOTS = 8
#: Accounts below this index are those fixed accounts; the rest are handed out once each.
ATTACHED_FIRST = FIXED_ACCOUNTS * ATTACHED_FIXED_SLOTS


def claim(
    counter: Path, testnet: Testnet, count: int, *, first: int = 0, advice: str
) -> list[LocalAccount]:
    """The next ``count`` accounts from index ``first`` on, counted in ``counter``."""
    with FileLock(str(counter) + ".lock"):
        index = int(counter.read_text() or 0) if counter.exists() else 0
        start = first + index
        if start + count > testnet.account_count:
            raise ChainHarnessError(
                f"funded accounts ran out: the network's {testnet.account_count} genesis "
                f"accounts were all handed out ({start - first} so far, count in {counter}); "
                + advice
            )
        counter.write_text(str(index + count))
    return testnet.accounts(start, start + count)


def claim_attached(state: Path, testnet: Testnet, count: int) -> list[LocalAccount]:
    return claim(
        state.with_name(state.name + ".accounts"),
        testnet,
        count,
        first=ATTACHED_FIRST,
        advice="start it again with 'chainharness up --chain-accounts=N'",
    )

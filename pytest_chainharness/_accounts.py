"""Accounts of a network that outlives sessions (``chainharness up``), handed out once each.

A counter beside the state file, under a file lock, is shared by ``pytest
--chain-attach`` sessions (and their xdist workers) and by load users, so no two of them
ever sign with the same account.
"""

from __future__ import annotations

from pathlib import Path

from eth_account.signers.local import LocalAccount
from filelock import FileLock

from ._errors import ChainHarnessError
from ._testnet import Testnet

__all__ = ["ATTACHED_FIRST", "claim_attached"]

#: Accounts below this index are the fixed accounts of attached sessions (8 slots of 8).
ATTACHED_FIRST = 64


def claim_attached(state: Path, testnet: Testnet, count: int) -> list[LocalAccount]:
    used = state.with_name(state.name + ".accounts")
    with FileLock(str(used) + ".lock"):
        index = int(used.read_text() or 0) if used.exists() else 0
        used.write_text(str(index + count))
    first = ATTACHED_FIRST + index
    if first + count > testnet.account_count:
        raise ChainHarnessError(
            f"funded accounts ran out: the network's {testnet.account_count} accounts were all "
            f"handed out (count in {used}); start it again with 'chainharness up "
            "--chain-accounts=N'"
        )
    return testnet.accounts(first, first + count)

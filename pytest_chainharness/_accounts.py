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

__all__ = ["ATTACHED_FIRST", "ATTACHED_FIXED_SLOTS", "FIXED_ACCOUNTS", "claim_attached"]

#: Genesis accounts each session (xdist worker) keeps as ``chain.accounts``.
FIXED_ACCOUNTS = 8
#: Attached sessions: this many slots of FIXED_ACCOUNTS come first, by worker index.
ATTACHED_FIXED_SLOTS = 8
#: Accounts below this index are those fixed accounts; the rest are handed out once each.
ATTACHED_FIRST = FIXED_ACCOUNTS * ATTACHED_FIXED_SLOTS


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

"""Load against a network started by `chainharness up` (reads .chainharness/state.json).

    chainharness up --chain-nodes=4
    locust -f scenarios/load/locustfile.py                      # web UI on :8089
    locust -f scenarios/load/locustfile.py --headless -u 20 -r 10 -t 30s TransferUser ReadUser
    locust -f scenarios/load/locustfile.py --headless -u 20 -t 30s --processes 2

Set CHAINHARNESS_STATE to use another state file. Add your own users here: subclass
ChainUser and call self.rpc(method, params); every call is a request named after its
method in locust's statistics.
"""

from pytest_chainharness.load import ChainUser, ReadUser, TransferUser

__all__ = ["ChainUser", "ReadUser", "TransferUser"]

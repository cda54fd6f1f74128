"""The locustfile the ``load_test`` fixture and ``chainharness load`` run (in a child)."""

from pytest_chainharness.load import ReadUser, TransferUser

__all__ = ["ReadUser", "TransferUser"]

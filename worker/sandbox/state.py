"""The sandbox's state: its faults, the accepted credentials, the stored records and the counters."""

from __future__ import annotations

import hmac

from worker.sandbox.faults import FaultState
from worker.sandbox.store import RecordStore, Stats


class Sandbox:
    """The sandbox's state: faults, credentials, stored records, counters."""

    def __init__(self, faults: FaultState, accounts: dict[str, str] | None = None, max_stored: int = 5_000_000) -> None:
        self.faults = faults
        self.accounts = accounts
        self.store = RecordStore(max_stored)
        self.stats = Stats()

    def authorised(self, account: str, passcode: str) -> bool:
        if not account or not passcode:
            return False
        if self.accounts is None:
            return True
        expected = self.accounts.get(account)
        return expected is not None and hmac.compare_digest(expected.encode(), passcode.encode())

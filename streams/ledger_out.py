"""What the ledger worker hands to its Faust layer to send (``Out``), and the UTC time of
its event clock's microseconds (``utc_from_us``): shared by the worker's state machine
(streams/ledger_worker.py, streams/ledger_commands.py) and the services around it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Out:
    """One message to send."""

    topic: str
    key: bytes | None
    value: bytes


def utc_from_us(t_us: int) -> datetime:
    """The inverse of ``to_us``: epoch microseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(t_us / 1e6, UTC)

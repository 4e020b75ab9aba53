"""What the ledger worker hands to its Faust layer to send (``Out``), and the UTC time of
its event clock's microseconds (``utc_from_us``): shared by the worker's state machine
(streams/ledger_worker.py, streams/ledger_commands.py) and the services around it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


class Out:
    """One message to send: its bytes, or the message and how to render it (a tick's
    entry and notifications). A rendered message's bytes are made on the first read of
    ``value`` and kept; the message is then let go (``message`` None), so what the
    ledger keeps (its view history) holds bytes, not models. The Faust layer reads
    ``value`` of everything; the core replay engine (replay/engine.py) reads
    ``message`` of the notifications it hands to the policy and never renders them."""

    __slots__ = ("_message", "_render", "_value", "key", "topic")

    def __init__(self, topic: str, key: bytes | None, value: bytes | None = None, *,
                 message: Any = None, render: Callable[[Any], bytes] | None = None) -> None:
        if value is None and (message is None or render is None):
            raise ValueError("an Out needs its bytes or a message and its renderer")
        self.topic, self.key, self._value = topic, key, value
        self._message, self._render = message, render

    @property
    def value(self) -> bytes:
        v = self._value
        if v is None:
            assert self._render is not None
            v = self._value = self._render(self._message)
            self._message = self._render = None
        return v

    @property
    def message(self) -> Any:
        """The message itself until its bytes are rendered, else None."""
        return self._message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Out):
            return NotImplemented
        return (self.topic, self.key, self.value) == (other.topic, other.key, other.value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Out(topic={self.topic!r}, key={self.key!r}, value={self.value!r})"


def utc_from_us(t_us: int) -> datetime:
    """The inverse of ``to_us``: epoch microseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(t_us / 1e6, UTC)

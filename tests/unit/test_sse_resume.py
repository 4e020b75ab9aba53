"""At-least-once notification streams: every SSE event carries its position in the app's
notification log as ``id``; a client reconnecting with ``Last-Event-ID`` gets every
notification after it (read back from the log), then the live ones, in order, with no
gap and no repeat; a stream that falls behind its bounded queue reads the dropped part
back instead of losing it; what the log no longer has is announced by a ``gap`` event;
a malformed id is a 422 with the reason. The real routes on uvicorn, with the in-memory
bus (a one-partition log per app) standing in for Kafka."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from ecovisor.api.app import create_app
from ecovisor.client import EcovisorClient, EcovisorError
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import Notification
from tests.fakes.api import InMemoryBus, InMemoryStateSource, serve
from tests.fakes.sites import TWO_APPS

SITE = TWO_APPS
WEB = "web-token-123456"
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


class LogBus(InMemoryBus):
    """The in-memory bus, fed from a test thread into the server's loop; ``earliest``
    stands in for retention (records before it are gone)."""

    loop: asyncio.AbstractEventLoop | None = None
    earliest = 0

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    def emit(self, *ns: Notification) -> None:
        """Append (and dispatch) in one loop callback: no stream runs in between."""
        assert self.loop is not None
        done = threading.Event()

        def run() -> None:
            for n in ns:
                self.notify(n)
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(5)

    async def offsets(self, app: str) -> dict[int, tuple[int, int]]:
        (_, end), = (await super().offsets(app)).values()
        return {0: (min(self.earliest, end), end)}


def note(i: int, app: str = "web") -> Notification:
    return Notification(site="s1", time=T0, app=app, type="carbon_change", data={"i": i})


@pytest.fixture()
def served() -> Iterator[tuple[str, LogBus]]:
    bus = LogBus()
    with serve(create_app(parse_config(SITE), InMemoryStateSource(), bus), 10) as url:
        yield url, bus


def read_events(url: str, n: int, headers: dict[str, str] | None = None,
                before: object = None) -> list[tuple[str, str, dict]]:
    """The first ``n`` events after ``ready`` as (event, id, data); ``before()`` runs once
    the stream is open (its ``ready`` received)."""
    out: list[tuple[str, str, dict]] = []
    h = {"Authorization": f"Bearer {WEB}", **(headers or {})}
    with httpx.Client(timeout=httpx.Timeout(10, read=5)) as http, http.stream(
        "GET", f"{url}/v1/apps/web/notifications", headers=h, params={"ping_s": 0.2}
    ) as r:
        assert r.status_code == 200, r.read()
        ev: dict[str, str] = {}
        deadline = time.monotonic() + 10
        for line in r.iter_lines():  # a keep-alive every 0.2 s: the deadline is checked
            if time.monotonic() > deadline:
                break
            if line.startswith(":"):
                continue
            if line:
                k, _, v = line.partition(":")
                ev[k] = v.strip()
                continue
            if ev.get("event") == "ready":
                if callable(before):
                    before()
            elif ev.get("event"):
                out.append((ev["event"], ev.get("id", ""), json.loads(ev.get("data", "{}"))))
                if len(out) == n:
                    return out
            ev = {}
    return out  # too few: the assertion shows which


def test_resume_with_last_event_id_gets_exactly_the_rest_in_order(
    served: tuple[str, LogBus],
) -> None:
    url, bus = served
    first = read_events(url, 3, before=lambda: bus.emit(*(note(i) for i in range(3))))
    assert [(e, i, d["data"]["i"]) for e, i, d in first] == [
        ("carbon_change", "0:0", 0), ("carbon_change", "0:1", 1), ("carbon_change", "0:2", 2)
    ]  # fmt: skip
    bus.emit(*(note(i) for i in range(3, 7)), note(99, app="batch"))  # while disconnected
    rest = read_events(url, 6, headers={"Last-Event-ID": "0:1"},
                       before=lambda: bus.emit(note(7), note(8)))  # fmt: skip
    assert [d["data"]["i"] for _, _, d in rest] == [2, 3, 4, 5, 6, 7]
    assert [i for _, i, _ in rest] == [f"0:{k}" for k in range(2, 8)]


def test_a_stream_behind_its_queue_reads_the_dropped_part_back(
    served: tuple[str, LogBus],
) -> None:
    url, bus = served
    bus.hub._queue_size = 3  # noqa: SLF001 - a tiny queue: 20 at once must overflow it
    got = read_events(url, 20, before=lambda: bus.emit(*(note(i) for i in range(20))))
    assert [d["data"]["i"] for _, _, d in got] == list(range(20))
    assert [i for _, i, _ in got] == [f"0:{k}" for k in range(20)]


def test_what_the_log_no_longer_has_is_a_gap_event_not_silence(
    served: tuple[str, LogBus],
) -> None:
    url, bus = served
    bus.emit(*(note(i) for i in range(10)))
    bus.earliest = 6  # 0..5 deleted by retention
    got = read_events(url, 5, headers={"Last-Event-ID": "0:2"})
    assert got[0][0] == "gap" and got[0][2]["from"] == 3 and got[0][2]["to"] == 6
    assert "retention" in got[0][2]["reason"]
    assert [d["data"]["i"] for _, _, d in got[1:]] == [6, 7, 8, 9]
    # an id past the end of the log: the (in-memory) broker restarted; replay it all
    bus.earliest = 0
    got = read_events(url, 11, headers={"Last-Event-ID": "0:50"})
    assert got[0][0] == "gap" and "restarted" in got[0][2]["reason"]
    assert [d["data"]["i"] for _, _, d in got[1:]] == list(range(10))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "expected <partition>:<offset>"),
        ("0:1" + ",0:1" * 100, "longer than 256"),
        ("0:99999999999999999999", "expected <partition>:<offset>"),
        ("3:1", "no partition 3"),
    ],
)
def test_a_bad_last_event_id_is_a_422_with_the_reason(
    served: tuple[str, LogBus], value: str, reason: str
) -> None:
    url, _ = served
    r = httpx.get(f"{url}/v1/apps/web/notifications",
                  headers={"Authorization": f"Bearer {WEB}", "Last-Event-ID": value})  # fmt: skip
    assert r.status_code == 422, r.text
    [item] = r.json()["detail"]
    assert item["loc"] == ["header", "last-event-id"] and reason in item["msg"]


@pytest.mark.parametrize("types", ["tick,no_such_type", "tick," * 200])
def test_the_types_filter_is_bounded_and_checked(served: tuple[str, LogBus], types: str) -> None:
    url, _ = served
    r = httpx.get(f"{url}/v1/apps/web/notifications", params={"types": types},
                  headers={"Authorization": f"Bearer {WEB}"})  # fmt: skip
    assert r.status_code == 422, r.text
    [item] = r.json()["detail"]
    assert item["loc"] == ["query", "types"]


def test_client_resumes_after_the_last_notification_it_handled(
    served: tuple[str, LogBus],
) -> None:
    url, bus = served
    eco = EcovisorClient(url, WEB)
    seen: list[int] = []
    eco.on("carbon_change")(lambda n: seen.append(n.data["i"]))
    out: list[int] = []
    th = threading.Thread(target=lambda: out.append(eco.run(max_events=3)), daemon=True)
    th.start()
    while bus.hub.subscribers("web") == 0:
        assert th.is_alive()
    bus.emit(*(note(i) for i in range(5)))
    th.join(10)
    assert out == [3] and seen == [0, 1, 2] and eco.last_event_id == "0:2"
    bus.emit(note(5))  # while no stream is open
    th = threading.Thread(target=lambda: out.append(eco.run(max_events=3)), daemon=True)
    th.start()
    th.join(10)
    if th.is_alive():
        eco.stop()
    assert seen == [0, 1, 2, 3, 4, 5] and eco.last_event_id == "0:5"
    # a refused id is raised, not retried forever
    eco.last_event_id = "9:1"
    with pytest.raises(EcovisorError, match="422"):
        eco.run(max_events=1)

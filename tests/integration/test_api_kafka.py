"""The REST API on the real Kafka-protocol broker (tansu): setters publish commands with
the app's token on ecovisor.commands; lifecycle notifications produced on the app's
notification topic answer ``?wait=true``; the SSE stream carries only that app's
notifications (another app's topic is never read into it)."""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ecovisor.adapters.kafka import create_topics
from ecovisor.api.app import create_app
from ecovisor.api.command_bus import KafkaBus
from ecovisor.client import EcovisorClient, ForbiddenError, Tick
from ecovisor.contract import topics
from ecovisor.contract.commands import parse_command, verify_command
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import Notification, TickData
from tests.fakes.api import InMemoryStateSource, serve

pytestmark = pytest.mark.integration


def site(a: str, b: str) -> str:
    return f"""
site:
  id: s1
  nodes: [{{id: n1, cores: 2}}]
apps:
  - id: {a}
    token: token-of-{a}
    containers: [{{id: {a}-1, node: n1, backend: {{type: process, cgroup: t/{a}-1}}}}]
  - id: {b}
    token: token-of-{b}
    containers: [{{id: {b}-1, node: n1, backend: {{type: process, cgroup: t/{b}-1}}}}]
"""


@pytest.fixture()
def served(kafka_bootstrap: str) -> Iterator[dict]:
    # fresh app ids: the broker lives for the whole session
    sfx = uuid.uuid4().hex[:6]
    a, b = f"apia-{sfx}", f"apib-{sfx}"
    cfg = parse_config(site(a, b))
    api = create_app(cfg, InMemoryStateSource(), KafkaBus(kafka_bootstrap, [a, b]))
    with serve(api) as url:
        commands = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        tp = TopicPartition(topics.COMMANDS, 0)
        commands.assign([tp])
        commands.seek_to_end(tp)
        commands.position(tp)
        prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        yield {"url": url, "a": a, "b": b, "commands": commands, "prod": prod}
        prod.close()
        commands.close()


def read_commands(c: KafkaConsumer, n: int, apps: tuple[str, ...], timeout: float = 10
                  ) -> list[dict]:
    """The next ``n`` commands of ``apps`` (the broker is the session's: another test's
    commands may still arrive after the fixture's seek to the end)."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=200).values():
            out.extend(m for r in batch if (m := json.loads(r.value))["app"] in apps)
    return out


def note(app: str, typ: str, **kw) -> bytes:
    return Notification(site="s1", time=datetime.now(UTC), app=app, type=typ, **kw).to_json()


def test_setter_publishes_and_waits_for_the_outcome_on_kafka(served: dict) -> None:
    a, prod = served["a"], served["prod"]
    eco = EcovisorClient(served["url"], f"token-of-{a}", wait_timeout=10)
    r = eco.set_container_powercap(f"{a}-1", 2.5)
    [cmd] = read_commands(served["commands"], 1, (served["a"], served["b"]))
    assert cmd["type"] == "set_container_powercap" and cmd["app"] == a
    assert cmd["command_id"] == r.command_id
    # signed with the app's token, which is not on the topic
    assert "token" not in cmd and f"token-of-{a}" not in json.dumps(cmd)
    assert verify_command(parse_command(json.dumps(cmd)), f"token-of-{a}")
    assert cmd["container"] == f"{a}-1" and cmd["watts"] == 2.5

    # wait=true: a stand-in for the ledger answers on the app's notification topic
    out: list = []
    th = threading.Thread(
        target=lambda: out.append(eco.set_battery_charge_rate(1.5, wait=True)), daemon=True
    )
    th.start()
    [cmd] = read_commands(served["commands"], 1, (served["a"], served["b"]))
    cid = cmd["command_id"]
    prod.send(topics.notifications(a), note(a, "command_accepted", command_id=cid))
    prod.send(topics.notifications(a), note(a, "command_applied", command_id=cid, data={"w": 1}))
    prod.flush()
    th.join(15)
    assert out and out[0].status == "applied" and out[0].data == {"w": 1}


def test_sse_carries_only_the_apps_own_notifications(served: dict) -> None:
    a, b, prod = served["a"], served["b"], served["prod"]
    eco = EcovisorClient(served["url"], f"token-of-{a}")
    seen: list[Notification] = []
    ticks: list[Tick] = []
    eco.on("carbon_change", "battery_empty")(seen.append)
    eco.on_tick(ticks.append)
    th = threading.Thread(target=lambda: eco.run(max_events=3), daemon=True)
    th.start()
    time.sleep(1.0)  # the SSE stream subscribes
    td = TickData(
        tick_s=1,
        next_solar_w=1,
        solar_w=1,
        grid_w=0,
        grid_carbon_g_per_kwh=123,
        battery_charge_level_wh=0,
        battery_discharge_rate_w=0,
        battery_charge_rate_setting_w=0,
        battery_max_discharge_setting_w=0,
        app_power_w=1,
        unserved_w=0,
        carbon_g=0,
    )
    prod.send(topics.notifications(b), note(b, "carbon_change", data={"secret": "b"}))
    prod.send(topics.notifications(b), note(b, "tick", tick=5, data=td.model_dump()))
    prod.send(topics.notifications(a), note(a, "carbon_change", data={"g": 1}))
    prod.send(topics.notifications(a), note(a, "tick", tick=6, data=td.model_dump()))
    prod.send(topics.notifications(a), note(a, "battery_empty"))
    prod.flush()
    th.join(15)
    assert not th.is_alive()
    assert [n.type for n in seen] == ["carbon_change", "battery_empty"]
    assert all(n.app == a for n in seen) and seen[0].data == {"g": 1}
    assert [t.index for t in ticks] == [6] and ticks[0].data.grid_carbon_g_per_kwh == 123
    # and b's token cannot open a's stream
    with pytest.raises(ForbiddenError, match="403"):
        EcovisorClient(served["url"], f"token-of-{b}", app=a).run(max_events=1)


def test_sse_resumes_after_last_event_id_from_kafka_across_an_api_restart(
    kafka_bootstrap: str,
) -> None:
    """At-least-once on the real broker: a client handles 3 of 5 notifications and
    disconnects; 3 more are published while no API runs; a new API instance (a fresh
    consumer at the topic's end) serves a client resuming with the last event id: it
    gets exactly the 5 it had not handled, in order, read back from Kafka, then the live
    ones, with no gap and no repeat."""
    sfx = uuid.uuid4().hex[:6]
    a, b = f"apia-{sfx}", f"apib-{sfx}"
    cfg = parse_config(site(a, b))
    # created up front with one partition (a producer's metadata request would have tansu
    # auto-create it with several, and order holds only within a partition)
    create_topics(kafka_bootstrap, [topics.notifications(a), topics.notifications(b)])
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)

    def publish(*idx: int) -> None:
        for i in idx:
            prod.send(topics.notifications(a), note(a, "carbon_change", data={"i": i}))
        prod.flush()

    def run(eco: EcovisorClient, n: int, then: object = None) -> list[int]:
        seen: list[int] = []
        eco.on("carbon_change")(lambda x: seen.append(x.data["i"]))
        th = threading.Thread(target=lambda: eco.run(max_events=n), daemon=True)
        th.start()
        deadline = time.monotonic() + 10
        while eco.last_event_id is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the `ready` event's id: the stream is positioned
        if callable(then):
            then()
        th.join(15)
        if th.is_alive():
            eco.stop()
        eco._handlers.clear()  # noqa: SLF001 - the next run counts afresh
        return seen

    prod.send(topics.notifications(a), note(a, "carbon_change", data={"i": -1})).get(10)
    with serve(create_app(cfg, InMemoryStateSource(), KafkaBus(kafka_bootstrap, [a, b]))) as url:
        eco = EcovisorClient(url, f"token-of-{a}")
        assert run(eco, 3, then=lambda: publish(0, 1, 2, 3, 4)) == [0, 1, 2]
        last = eco.last_event_id
        assert last is not None and last.startswith("0:")
        eco.close()
    publish(5, 6, 7)  # no API running
    with serve(create_app(cfg, InMemoryStateSource(), KafkaBus(kafka_bootstrap, [a, b]))) as url:
        eco = EcovisorClient(url, f"token-of-{a}", last_event_id=last)
        assert run(eco, 5) == [3, 4, 5, 6, 7]  # replayed from Kafka
        assert run(eco, 2, then=lambda: publish(8, 9)) == [8, 9]  # replayed or live
        eco.close()
    prod.close()

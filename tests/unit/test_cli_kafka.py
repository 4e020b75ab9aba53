"""`ecovisor cmd`, `tail` and `topics` against a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from typer.testing import CliRunner

from ecovisor.adapters.kafka import create_topics, existing_partitions
from ecovisor.cli.main import app
from ecovisor.contract import commands, notifications, operator_messages, topics
from ecovisor.embedded.servers import Server, free_port, tansu_command

pytestmark = pytest.mark.integration
runner = CliRunner()


def _end(bootstrap: str, topic: str) -> tuple[KafkaConsumer, TopicPartition]:
    cons = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    cons.assign([tp])
    cons.seek_to_end(tp)
    cons.position(tp)
    return cons, tp


def test_cmd_publishes_a_valid_command(kafka_bootstrap: str) -> None:
    cons, _ = _end(kafka_bootstrap, topics.COMMANDS)
    r = runner.invoke(
        app,
        ["cmd", "set-powercap", "--app", "web", "--container", "web-1", "--watts", "3.5",
         "--token", "web-token-1234", "--site", "s1", "--bootstrap", kafka_bootstrap],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    command_id = r.output.strip().splitlines()[-1]
    got = []
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        got = [rec for recs in cons.poll(500).values() for rec in recs]
    cons.close()
    c = commands.parse_command(got[0].value)
    assert isinstance(c, commands.SetContainerPowercap)
    assert (c.command_id, c.app, c.container, c.watts, c.site) == (
        command_id, "web", "web-1", 3.5, "s1",
    )  # fmt: skip
    # keyed by site: a group of ledger workers finds a site's commands on its partition
    assert got[0].key == b"s1"


def test_cmd_wait_follows_the_lifecycle(kafka_bootstrap: str) -> None:
    create_topics(kafka_bootstrap, [topics.notifications("waitapp")])
    cons, _ = _end(kafka_bootstrap, topics.COMMANDS)

    def fake_ledger() -> None:  # answers like the ledger: accepted, then rejected
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for recs in cons.poll(300).values():
                for rec in recs:
                    c = commands.parse_command(rec.value)
                    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
                    for typ in ("command_accepted", "command_rejected"):
                        n = notifications.Notification(
                            site=c.site, time=datetime.now(UTC), app=c.app, type=typ,
                            command_id=c.command_id, reason="below idle floor"
                            if typ == "command_rejected" else None,
                        )  # fmt: skip
                        prod.send(topics.notifications(c.app), n.to_json())
                    prod.flush()
                    prod.close()
                    return

    t = threading.Thread(target=fake_ledger)
    t.start()
    r = subprocess.run(
        [sys.executable, "-m", "ecovisor.cli", "cmd", "set-powercap", "--app", "waitapp",
         "--container", "c1", "--watts", "0.1", "--token", "tok-12345", "--site", "s1",
         "--bootstrap", kafka_bootstrap, "--wait", "--timeout", "20"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    t.join()
    cons.close()
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 1, r.stdout + r.stderr  # rejected
    assert "command_accepted" in lines[1] and "command_rejected" in lines[2]
    assert "below idle floor" in lines[2] and lines[0] in lines[2]


def test_tail_json_and_readable(kafka_bootstrap: str) -> None:
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    marker = f"tail-{time.monotonic_ns()}"
    dl = operator_messages.dead_letter(f"mqtt:{marker}", "broken", b"{x")
    prod.send(topics.DEADLETTER, dl.model_dump_json().encode()).get(10)
    prod.close()
    args = ["tail", "deadletter", "--from-beginning", "--idle-timeout", "2",
            "--bootstrap", kafka_bootstrap]  # fmt: skip
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    objs = [json.loads(line) for line in r.output.splitlines()]
    assert any(o["origin"] == f"mqtt:{marker}" and o["raw"] == "{x" for o in objs)
    r = runner.invoke(app, args)
    assert any(marker in ln and "reason='broken'" in ln for ln in r.output.splitlines())


def test_tail_needs_app_for_notifications(kafka_bootstrap: str) -> None:
    r = runner.invoke(app, ["tail", "notifications", "--bootstrap", kafka_bootstrap])
    assert r.exit_code == 2 and "--app" in r.output


def test_topics_lists_and_creates(kafka_bootstrap: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "site: {id: s}\napps: [{id: newapp, token: newapp-token}]\n"
        f"stack: {{kafka_bootstrap: '{kafka_bootstrap}'}}\n"
    )
    r = runner.invoke(app, ["topics", "--config", str(cfg)])
    assert r.exit_code == 1 and "MISSING ecovisor.notifications.newapp" in r.output
    r = runner.invoke(app, ["topics", "--create", "--config", str(cfg)])
    assert r.exit_code == 0 and "ok      ecovisor.notifications.newapp" in r.output
    # the session's broker has the site-keyed topics with 1 partition: asking for 4
    # reports them and leaves them as they are
    r = runner.invoke(app, ["topics", "--create", "--partitions", "4", "--config", str(cfg)])
    assert r.exit_code == 1, r.output
    for t in topics.KEYED_BY_SITE:
        assert f"FEWER   {t}" in r.output
    assert "fewer partitions than the 4 wanted" in r.output and "remaps keys" in r.output
    assert existing_partitions(kafka_bootstrap, topics.KEYED_BY_SITE) == dict.fromkeys(
        topics.KEYED_BY_SITE, 1)  # fmt: skip


@pytest.fixture()
def fresh_broker(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A broker of its own (the session's already has the static topics)."""
    port = free_port()
    srv = Server(tansu_command(port), port, tmp_path / "tansu.log").start()
    yield f"127.0.0.1:{port}"
    srv.stop()


def test_topics_creates_the_ledgers_partition_counts(fresh_broker: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ecovisor.contract.config_file import load_config
    from streams.ledger_app import PartitionMismatch, prepare_topics
    from streams.ledger_group import SiteGroup

    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "site: {id: p}\napps: [{id: papp, token: papp-token}]\n"
        f"stack: {{kafka_bootstrap: '{fresh_broker}'}}\n"
    )
    r = runner.invoke(app, ["topics", "--create", "--partitions", "4", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    wanted = topics.all_topics(["papp"])
    have = existing_partitions(fresh_broker, wanted)
    assert have == topics.topic_partitions(wanted, 4)  # on the real broker
    assert {t: have[t] for t in topics.KEYED_BY_SITE} == dict.fromkeys(topics.KEYED_BY_SITE, 4)
    assert have[topics.LEDGER] == 1 and have[topics.notifications("papp")] == 1
    assert f"ok      {topics.TELEMETRY}" in r.output and "4 partitions (wanted 4)" in r.output
    # a ledger group of 4 partitions accepts them (and adds its changelogs), one of 2 not
    site = load_config(cfg)
    with pytest.raises(PartitionMismatch, match="ecovisor.telemetry has 4"):
        prepare_topics(SiteGroup.of([site], partitions=2), fresh_broker)
    prepare_topics(SiteGroup.of([site], partitions=4), fresh_broker)
    # asking again for fewer or more is reported, nothing is changed
    r = runner.invoke(app, ["topics", "--create", "--partitions", "8", "--config", str(cfg)])
    assert r.exit_code == 1 and f"FEWER   {topics.COMMANDS}" in r.output, r.output
    r = runner.invoke(app, ["topics", "--config", str(cfg)])
    assert r.exit_code == 1 and f"MORE    {topics.ACTUATOR_ACKS}" in r.output, r.output
    changelogs = ["ecovisor-ledger-p-snapshots-changelog", "ecovisor-ledger-p-counters-changelog"]
    assert existing_partitions(fresh_broker, changelogs) == dict.fromkeys(changelogs, 4)
    assert any(ln.startswith(f"other   {changelogs[0]}") and ln.endswith("4 partitions")
               for ln in r.output.splitlines())  # fmt: skip
    assert existing_partitions(fresh_broker, wanted) == have


def test_export_reads_the_ledger_to_its_end(kafka_bootstrap: str) -> None:
    from ecovisor.core.shares import AppShare, SiteShape
    from ecovisor.core.state import SiteTickInput
    from ecovisor.core.tick import initial_site_state, site_step

    site = f"exp{time.monotonic_ns()}"  # the broker is shared by the session's tests
    shape = SiteShape(tick_s=1)
    shares = {"a": AppShare()}
    st = initial_site_state(shape, shares, site=site)
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for k in (10, 11, 12):
        st, res = site_step(shape, shares, st, SiteTickInput(
            k=k, t_start=float(k), site_solar_mj=0, intensity_g_per_kwh=1.0,
            demand_mj={"a": {"c": 1000}}))  # fmt: skip
        raw = res.entries["a"].model_dump_json().encode()
        for _ in range(1 if k != 11 else 2):  # tick 11 re-sent, as by a restarted ledger
            prod.send(topics.LEDGER, raw).get(10)
    prod.close()
    t = lambda s: datetime.fromtimestamp(s, UTC).isoformat()  # noqa: E731
    r = runner.invoke(app, ["export", "--app", "a", "--from", t(11), "--to", t(13), "--csv",
                            "--bootstrap", kafka_bootstrap])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [ln.split(",") for ln in r.output.splitlines()[1:]]
    assert [row[2] for row in rows if row[0] == site] == ["11", "12"]

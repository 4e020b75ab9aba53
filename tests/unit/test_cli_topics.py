"""`ecovisor topics --partitions N` without a broker: the option's bounds, the counts it
asks the Kafka adapter for (the ledger's rule, ``topics.topic_partitions``), and how a
topic that exists with another count is reported (the real broker:
tests/unit/test_cli_kafka.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ecovisor.cli import topics as topics_cli
from ecovisor.cli.main import app
from ecovisor.contract import topics
from ecovisor.contract.config_file import ConfigError
from streams.ledger_group import SiteGroup

runner = CliRunner()
BOOT = ["--bootstrap", "127.0.0.1:1"]


class FakeBroker:
    """The three adapter calls of ``topics_cmd``: topic name -> partition count."""

    def __init__(self, have: dict[str, int] | None = None) -> None:
        self.have = dict(have or {})
        self.created: list[dict[str, int]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
        monkeypatch.setattr(topics_cli, "create_topics", self.create_topics)
        monkeypatch.setattr(topics_cli, "existing_topics", lambda boot, timeout: set(self.have))
        monkeypatch.setattr(topics_cli, "existing_partitions",
                            lambda boot, names, timeout: {t: self.have[t] for t in names
                                                          if t in self.have})  # fmt: skip
        return self

    def create_topics(self, boot: str, partitions: dict[str, int]) -> None:
        self.created.append(dict(partitions))
        for t, n in partitions.items():
            self.have.setdefault(t, n)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "partitions must be in 1..1024, got 0"),
        ("-3", "partitions must be in 1..1024, got -3"),
        ("1025", "partitions must be in 1..1024, got 1025"),
        ("99999999999999999999999", "partitions must be in 1..1024"),
        ("four", "'--partitions'"),
        ("2.5", "'--partitions'"),
    ],
)
def test_bad_partitions_are_a_usage_error_not_a_traceback(
    value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker().install(monkeypatch)
    r = runner.invoke(app, ["topics", "--create", "--partitions", value, *BOOT])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)  # click's usage error, no Python traceback
    assert "Traceback" not in r.output
    assert says in " ".join(r.output.replace("│", " ").split())
    assert broker.created == []  # rejected before the broker is touched


def test_partitions_needs_a_value() -> None:
    r = runner.invoke(app, ["topics", "--partitions"])
    assert r.exit_code == 2 and "requires an argument" in r.output


def test_the_bounds_are_the_ledgers() -> None:
    assert topics.check_partitions(1) == 1
    assert topics.check_partitions(topics.MAX_PARTITIONS) == topics.MAX_PARTITIONS
    with pytest.raises(ValueError, match="1..1024"):
        topics.check_partitions(topics.MAX_PARTITIONS + 1)
    # the ledger group takes the same bounds from the same function
    with pytest.raises(ConfigError, match="partitions must be in 1..1024, got 0"):
        SiteGroup.of([_cfg()], partitions=0)
    assert topics_cli.partition_count(7) == 7


def test_the_rule_gives_n_to_the_site_keyed_topics_only() -> None:
    names = topics.all_topics(["web"])
    want = topics.topic_partitions(names, 8)
    assert list(want) == names
    assert {t for t, n in want.items() if n == 8} == set(topics.KEYED_BY_SITE) == {
        topics.TELEMETRY, topics.COMMANDS, topics.ACTUATOR_ACKS}  # fmt: skip
    assert all(n == 1 for t, n in want.items() if t not in topics.KEYED_BY_SITE)
    # the ledger adds its changelogs to the keyed ones
    assert topics.topic_partitions(["x-changelog", "y"], 3, ["x-changelog"]) == {
        "x-changelog": 3, "y": 1}  # fmt: skip


@pytest.mark.parametrize("n", [1, 4, 1024])
def test_create_asks_for_the_rules_counts(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = FakeBroker().install(monkeypatch)
    r = runner.invoke(app, ["topics", "--create", "--partitions", str(n), *BOOT])
    assert r.exit_code == 0, r.output
    assert broker.created == [topics.topic_partitions(topics.static_topics(), n)]
    line = next(ln for ln in r.output.splitlines() if topics.TELEMETRY in ln)
    assert line.startswith("ok ") and line.endswith(f"(wanted {n})")


def test_default_is_one_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = FakeBroker().install(monkeypatch)
    r = runner.invoke(app, ["topics", "--create", *BOOT])
    assert r.exit_code == 0, r.output
    assert set(broker.created[0].values()) == {1}


def test_fewer_partitions_are_reported_not_altered(monkeypatch: pytest.MonkeyPatch) -> None:
    have = topics.topic_partitions(topics.static_topics(), 2)
    broker = FakeBroker(have).install(monkeypatch)
    r = runner.invoke(app, ["topics", "--create", "--partitions", "8", *BOOT])
    assert r.exit_code == 1, r.output
    assert broker.have == have  # nothing created or changed
    lines = r.output.splitlines()
    for t in topics.KEYED_BY_SITE:
        assert f"FEWER   {t}" in r.output
        assert any(ln.startswith("FEWER") and t in ln and "2 partitions, fewer than the 8 "
                   "wanted" in ln for ln in lines)  # fmt: skip
    assert any(ln.startswith("ok      ecovisor.ledger") for ln in lines)
    err = " ".join(ln for ln in lines if ln.startswith("error:"))
    assert "fewer partitions than the 8 wanted" in err and "remaps keys" in err


def test_more_partitions_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeBroker(topics.topic_partitions(topics.static_topics(), 16)).install(monkeypatch)
    r = runner.invoke(app, ["topics", *BOOT])  # the default: 1
    assert r.exit_code == 1, r.output
    assert f"MORE    {topics.TELEMETRY}" in r.output
    assert "cannot remove partitions" in r.output
    r = runner.invoke(app, ["topics", "--partitions", "16", *BOOT])
    assert r.exit_code == 0, r.output
    assert "16 partitions (wanted 16)" in r.output


def test_other_counts_of_unkeyed_topics_are_shown_not_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    have = topics.topic_partitions(topics.static_topics(), 4)
    have[topics.LEDGER] = 3
    have["ecovisor-ledger-s-snapshots-changelog"] = 4
    FakeBroker(have).install(monkeypatch)
    r = runner.invoke(app, ["topics", "--partitions", "4", *BOOT])
    assert r.exit_code == 0, r.output
    assert "3 partitions (created with 1; not keyed by site)" in r.output
    assert any(ln.startswith("other   ecovisor-ledger-s-snapshots-changelog")
               and ln.endswith("4 partitions") for ln in r.output.splitlines())  # fmt: skip


def _cfg():  # type: ignore[no-untyped-def]
    from ecovisor.contract.config import EcovisorConfig

    return EcovisorConfig.model_validate({"site": {"id": "s"}})

"""A group of sites across ledger workers: the partition of a site, the group's
configuration rules, which offsets a worker hands on (streams/ledger_group.py)."""

from __future__ import annotations

import types
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError, parse_config
from ecovisor.contract.topics import murmur2, site_partition
from streams.ledger_group import LedgerGroup, SiteGroup, not_ready_reason


@given(st.text(min_size=0, max_size=60), st.integers(min_value=1, max_value=512))
def test_site_partition_is_kafkas_default_partitioner(site: str, n: int) -> None:
    key = site.encode()
    parts = list(range(n))
    assert site_partition(site, n) == DefaultPartitioner()(key, parts, parts)
    assert 0 <= murmur2(key) < 2**32


def site(sid: str, apps: tuple[str, ...]) -> EcovisorConfig:
    body = "".join(f"  - id: {a}\n    token: tok-{a}-xxxxxxxx\n" for a in apps)
    return parse_config(f"site: {{id: {sid}}}\napps:\n{body}")


def test_a_group_needs_unique_sites_and_apps_and_a_name() -> None:
    g = SiteGroup.of([site("s1", ("a",))])
    assert (g.name, g.partitions, g.app_id) == ("s1", 1, "ecovisor-ledger-s1")
    with pytest.raises(ConfigError, match="name the group"):
        SiteGroup.of([site("s1", ("a",)), site("s2", ("b",))])
    with pytest.raises(ConfigError, match="app 'a' is in sites"):
        SiteGroup.of([site("s1", ("a",)), site("s2", ("a",))], "g", 4)
    with pytest.raises(ConfigError, match="configured twice"):
        SiteGroup.of([site("s1", ("a",)), site("s1", ("b",))], "g", 4)
    with pytest.raises(ConfigError, match="partitions"):
        SiteGroup.of([site("s1", ("a",))], None, 0)
    g = SiteGroup.of([site("s1", ("a",)), site("s2", ("b",))], "g", 8)
    assert g.app_sites == {"a": "s1", "b": "s2"}
    with pytest.raises(ConfigError, match="group name"):
        SiteGroup.of([site("s1", ("a",))], "my sites", 4)
    assert g.partition("s2") == site_partition("s2", 8)


def group(sites: dict[str, int], active: set[int]) -> tuple[LedgerGroup, dict[str, Any]]:
    """A LedgerGroup over sites with restored snapshot offsets (site -> last offset on
    its partition, -1: no snapshot); services are stand-ins."""
    cfgs = [site(s, (f"{s}-app",)) for s in sites]
    g = SiteGroup.of(cfgs, "g", 4)
    made: dict[str, Any] = {}

    def make(cfg: EcovisorConfig) -> Any:
        sid = cfg.site.id
        p = g.partition(sid)
        offs = {} if sites[sid] < 0 else {p: sites[sid]}
        led = types.SimpleNamespace(offsets=offs)
        svc = types.SimpleNamespace(ledger=led, loaded=lambda: led, unacked=[],
                                    caught_up=types.SimpleNamespace(set=lambda: None),
                                    leave=lambda moved: None)  # fmt: skip
        made[sid] = svc
        return svc

    return LedgerGroup(g, lambda: active, make), made


def two_sites_on_one_partition() -> tuple[str, str, int]:
    by: dict[int, list[str]] = {}
    i = 0
    while True:
        s = f"x{i}"
        p = site_partition(s, 4)
        by.setdefault(p, []).append(s)
        if len(by[p]) == 2:
            return by[p][0], by[p][1], p
        i += 1


def test_a_partition_is_read_from_its_sites_oldest_snapshot() -> None:
    s1, s2, p = two_sites_on_one_partition()
    g, _ = group({s1: 40, s2: 9}, {p})
    assert g.resume_offset(p) == 10
    assert g.position(p, 25) == "first"
    assert g.position_first(p, 25, earliest=0) == 10  # past it: seek back to 10
    assert g.position(p, 26) is False  # read before the seek: dropped
    assert g.position(p, 10) is True and g.position(p, 11) is True
    g.revoke({p})
    assert g.services == {} and g.position(p, 5) == "first"
    assert g.position_first(p, 5, earliest=0) is True  # behind: the sites skip it


def test_a_gap_in_a_partition_seeks_back_and_a_lasting_one_is_accepted() -> None:
    s1, _, p = two_sites_on_one_partition()
    g, _ = group({s1: -1}, {p})
    assert g.position_first(p, 0, earliest=0) is True
    assert g.position(p, 1) is True
    assert g.position(p, 7) == 2  # offsets 2..6 never delivered: seek back to 2
    assert g.position(p, 8) is False  # fetched before the seek
    assert g.position(p, 7) is True  # 7 again after the seek: the broker has no 2..6
    assert g.position(p, 8) is True
    assert g.position(p, 12) == 9
    assert g.position(p, 9) is True  # the seek brought the gap back


def test_the_earliest_offset_bounds_the_seek_back() -> None:
    s1, _, p = two_sites_on_one_partition()
    g, _ = group({s1: -1}, {p})  # no snapshot: from 0, but the log starts at 50
    assert g.position_first(p, 60, earliest=50) == 50
    assert g.position(p, 50) is True


def test_ownership_follows_assignment_or_a_delivered_message() -> None:
    s1, s2, p = two_sites_on_one_partition()
    active: set[int] = set()
    g, made = group({s1: -1, s2: -1}, active)
    assert g.service(s1) is None and not list(g.owned())
    assert g.service(s1, delivered_on=(p + 1) % 4) is None  # another partition: no proof
    assert g.service(s1, delivered_on=p) is made[s1]
    active.add(p)
    assert {id(s) for s in g.owned()} == {id(made[s1]), id(made[s2])}
    assert g.site_of_key(s2.encode(), b"{}", by_app=False) == s2
    assert g.site_of_key(f"{s1}-app".encode(), b"{}", by_app=True) == s1
    assert g.site_of_key(None, b'{"site":"%s"}' % s2.encode(), by_app=False) == s2
    assert g.site_of_key(b"nope", b"{}", by_app=False) is None


def test_a_message_keyed_to_another_partition_is_dead_lettered_with_the_reason() -> None:
    from ecovisor.contract import topics
    from ecovisor.contract.operator_messages import DeadLetter

    s1, _, p = two_sites_on_one_partition()
    g, _ = group({s1: -1}, {p})
    out = g.misrouted(topics.TELEMETRY, s1, (p + 1) % 4, b'{"site": "x"}')
    dl = DeadLetter.model_validate_json(out.value)
    assert out.topic == topics.DEADLETTER and dl.origin == topics.TELEMETRY
    assert f"site {s1!r} is on partition {p}" in dl.reason and "key it by its site" in dl.reason
    unknown = DeadLetter.model_validate_json(g.misrouted(topics.COMMANDS, None, 0, b"{}").value)
    assert "no configured site or app" in unknown.reason


def test_the_sites_of_a_group_share_one_internal_key(monkeypatch) -> None:
    """One worker serves its sites' views and one /metrics page: a key per site would let
    one site's key read another's (refused at start)."""
    monkeypatch.delenv("ECOVISOR_INTERNAL_KEY", raising=False)

    def keyed(sid: str, app: str, key: str | None) -> EcovisorConfig:
        lit = f", internal_key: {key}" if key else ""
        return parse_config(f"site: {{id: {sid}{lit}}}\napps:\n  - id: {app}\n"
                            f"    token: tok-{app}-xxxxxxxx\n")  # fmt: skip

    shared = "k" * 32
    g = SiteGroup.of([keyed("s1", "a", shared), keyed("s2", "b", shared)], "g", 4)
    assert set(g.sites) == {"s1", "s2"}
    for other in ("x" * 32, None):
        with pytest.raises(ConfigError, match="share one internal key") as e:
            SiteGroup.of([keyed("s1", "a", shared), keyed("s2", "b", other)], "g", 4)
        assert shared not in str(e.value)  # never the secret in an error
    # the environment's key is every site's
    monkeypatch.setenv("ECOVISOR_INTERNAL_KEY", "e" * 32)
    SiteGroup.of([keyed("s1", "a", shared), keyed("s2", "b", "y" * 32)], "g", 4)


def test_a_worker_is_ready_once_it_joined_recovered_and_caught_up() -> None:
    ok = {"failed": None, "joined": True, "rebalancing": False, "recovered": True,
          "owned": {0, 3}, "caught_up": {0, 3}, "event_mode": True}  # fmt: skip
    assert not_ready_reason(**ok) is None
    cases = {
        "failed": (RuntimeError("app web: boom"), "a task of the worker failed"),
        "joined": (False, "joining"),
        "rebalancing": (True, "rebalancing"),
        "recovered": (False, "recovering the tables"),
        "caught_up": ({0}, "partition(s) [3]"),
    }
    for field, (value, why) in cases.items():
        reason = not_ready_reason(**{**ok, field: value})
        assert reason is not None and why in reason, (field, reason)
        assert "web" not in reason  # /ready is open: it names no app
    # real time: no catch-up to wait for; a worker that owns nothing is ready
    assert not_ready_reason(**{**ok, "caught_up": set(), "event_mode": False}) is None
    assert not_ready_reason(**{**ok, "owned": set(), "caught_up": set()}) is None

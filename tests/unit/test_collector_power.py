"""Power collector readers on FAKE sysfs/procfs trees built in tmp dirs. cgroup v2 and
RAPL can only be tested this way here (the machine has cgroup v1 and no powercap); a real
cgroup v1 measurement is in tests/integration/test_collector_power_cgroup.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.kepler import parse_prometheus, read_kepler
from collectors.power import (
    CpuMeter,
    PowerCollector,
    ProcStat,
    Rapl,
    WrappingCounter,
    pick_node,
)
from collectors.publisher import Publisher
from ecovisor.adapters.cgroups import CgroupV1Backend, CgroupV2Backend
from ecovisor.adapters.lxd import LxdBackend
from ecovisor.contract.config_file import ConfigError, parse_config
from ecovisor.core.power_model import get_preset
from tests.fakes.lxd import FakeLxd

FIXTURES = Path(__file__).parent.parent / "fixtures" / "collectors"


def write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_cgroup_v1_cpuacct_usage(tmp_path: Path) -> None:
    write(tmp_path / "cpuacct/ecovisor/web-1/cpuacct.usage", "2500000000\n")
    assert CpuMeter(CgroupV1Backend("ecovisor/web-1", str(tmp_path))).cpu_s() == pytest.approx(2.5)
    assert CpuMeter(CgroupV1Backend("ecovisor/none", str(tmp_path))).cpu_s() is None


def test_cgroup_v2_cpu_stat(tmp_path: Path) -> None:
    write(
        tmp_path / "eco.slice/web-1/cpu.stat",
        "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n",
    )
    meter = CpuMeter(CgroupV2Backend("eco.slice/web-1", str(tmp_path)))
    assert meter.cpu_s() == pytest.approx(1.234567)
    write(tmp_path / "bad/cpu.stat", "user_usec 1\n")
    assert CpuMeter(CgroupV2Backend("bad", str(tmp_path))).cpu_s() is None


def test_proc_stat_busy_seconds(tmp_path: Path) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice (USER_HZ ticks)
    write(
        tmp_path / "stat",
        "cpu  100 20 30 5000 40 5 5 2 50 0\ncpu0 50 10 15 2500 20 3 2 1 25 0\n"
        "cpu1 50 10 15 2500 20 2 3 1 25 0\nintr 1 2 3\n",
    )
    ps = ProcStat(str(tmp_path / "stat"), hz=100)
    assert ps.busy_s() == pytest.approx((100 + 20 + 30 + 5 + 5 + 2) / 100)  # no idle/iowait
    assert ps.cores() == 2


def test_proc_stat_real_machine_grows() -> None:
    ps = ProcStat()
    a = ps.busy_s()
    sum(i * i for i in range(300_000))
    assert ps.busy_s() >= a
    assert ps.cores() >= 1


def _rapl_zone(root: Path, name: str, uj: int, wrap: int) -> None:
    write(root / name / "energy_uj", f"{uj}\n")
    write(root / name / "max_energy_range_uj", f"{wrap}\n")


def test_rapl_sums_packages_and_handles_wrap(tmp_path: Path) -> None:
    wrap = 1_000_000_000
    _rapl_zone(tmp_path, "intel-rapl:0", 999_000_000, wrap)
    _rapl_zone(tmp_path, "intel-rapl:1", 10_000_000, wrap)
    _rapl_zone(tmp_path, "intel-rapl:0:0", 5, wrap)  # sub-zone (core): inside package 0
    r = Rapl(str(tmp_path))
    assert [z.name for z in r.zones()] == ["intel-rapl:0", "intel-rapl:1"]
    assert r.energy_j() == 0.0  # first reading is the origin
    _rapl_zone(tmp_path, "intel-rapl:0", 2_000_000, wrap)  # wrapped: +3 J
    _rapl_zone(tmp_path, "intel-rapl:1", 15_000_000, wrap)  # +5 J
    assert r.energy_j() == pytest.approx(8.0)
    assert Rapl(str(tmp_path / "absent")).energy_j() is None


def test_wrapping_counter_without_range_treats_backwards_as_reset() -> None:
    c = WrappingCounter()
    c.update(10, None)
    assert c.update(15, None) == 5
    assert c.update(3, None) == 5
    assert c.update(4, None) == 6


def test_kepler_010_metrics() -> None:
    r = read_kepler((FIXTURES / "kepler-0.10.prom").read_text())
    assert r.generation == "0.10+"
    assert r.node_energy_j == pytest.approx(1000.0 + 200.0)
    assert r.node_idle_j == pytest.approx(400.0 + 50.0)
    assert r.containers["web-1"] == pytest.approx(12.5 + 1.5)
    assert r.containers["batch-1"] == pytest.approx(30.0)


def test_kepler_legacy_metrics() -> None:
    r = read_kepler((FIXTURES / "kepler-0.7.prom").read_text())
    assert r.generation == "<0.10"
    assert r.containers["web-1"] == pytest.approx(20.0 + 5.0)
    assert r.node_energy_j == pytest.approx(700.0 + 300.0 + 80.0)
    assert r.node_idle_j == pytest.approx(300.0)


def test_parse_prometheus_escapes_and_timestamps() -> None:
    s = parse_prometheus('# HELP x y\nm{a="q\\"x",b="2"} 3.5 1700000000\nbad line here\n')
    assert s == [("m", {"a": 'q"x', "b": "2"}, 3.5)]


def test_parse_prometheus_whole_exposition_with_types_and_escapes() -> None:
    text = '# TYPE c_total counter\nc_total{p="a\\\\b",q="l1\\nl2"} 2\ng 1.5e3\n'
    assert parse_prometheus(text) == [
        ("c_total", {"p": "a\\b", "q": "l1\nl2"}, 2.0),
        ("g", {}, 1500.0),
    ]


def test_lxd_meter_through_the_lxd_backend() -> None:
    # the loopback LXD REST stand-in (tests/fakes/lxd.py), read through pylxd
    fake = FakeLxd()
    fake.add("web")
    fake.cpu_usage_ns["web"] = 4_000_000_000
    url = fake.start()
    try:
        assert CpuMeter(LxdBackend("web", url)).cpu_s() == pytest.approx(4.0)
        assert CpuMeter(LxdBackend("gone", url)).cpu_s() is None
    finally:
        fake.stop()


SITE = """
schema_version: 1
site:
  id: s
  shape: {{tick_s: 1.0, idle_attribution: {idle}}}
  nodes:
    - {{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}
apps:
  - id: web
    token: web-token-123
    containers:
      - id: web-1
        node: n1
        backend: {{type: cgroup_v1, cgroup: e/web-1, root: {root}}}
  - id: batch
    token: batch-token-123
    containers:
      - {{id: b-1, node: n1, size: 3, backend: {{type: cgroup_v2, cgroup: e/b-1, root: {root}}}}}
"""


class FakeProc(ProcStat):
    def __init__(self) -> None:
        self.value = 100.0

    def busy_s(self) -> float:
        return self.value


def test_collector_attributes_model_energy(tmp_path: Path) -> None:
    cfg = parse_config(SITE.format(idle="equal", root=tmp_path))
    t = [0.0]
    proc = FakeProc()
    pub = Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)  # never connects
    coll = PowerCollector(cfg, "n1", pub, proc_stat=proc, clock=lambda: t[0], batch=False)
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", "0")
    write(tmp_path / "e/b-1/cpu.stat", "usage_usec 0\n")
    first = coll.tick()
    assert first.node is not None and first.node.energy_j == 0.0
    # 20 s later: web-1 used 5 CPU-s, b-1 15 CPU-s, the node 25 (5 outside containers)
    t[0] = 20.0
    proc.value = 125.0
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", str(5 * 10**9))
    write(tmp_path / "e/b-1/cpu.stat", "usage_usec 15000000\n")
    s = coll.tick()
    model = get_preset("ecovisor-microserver", 2)
    node_j = model.power_w(25 / (2 * 20)) * 20
    assert s.node is not None
    assert s.node.energy_j == pytest.approx(node_j, abs=1e-3)
    assert s.node.idle_energy_j == pytest.approx(model.idle_power_w * 20, abs=1e-3)
    by = {c.container: c for c in s.containers}
    active = node_j - model.idle_power_w * 20
    idle_each = model.idle_power_w * 20 / 2  # equal split over the two containers
    assert by["web-1"].energy_j == pytest.approx(active * 5 / 25 + idle_each, abs=2e-3)
    assert by["b-1"].energy_j == pytest.approx(active * 15 / 25 + idle_each, abs=2e-3)
    assert by["web-1"].app == "web" and by["b-1"].app == "batch"
    assert by["web-1"].cpu_s == pytest.approx(5.0)
    assert [m.seq for m in s.containers] == [1, 1]  # per-source sequence numbers


def test_collector_skips_missing_container(tmp_path: Path) -> None:
    cfg = parse_config(SITE.format(idle="none", root=tmp_path))
    pub = Publisher("s", "127.0.0.1", 1, client_id="t")
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", "0")
    coll = PowerCollector(cfg, "n1", pub, proc_stat=FakeProc(), clock=lambda: 0.0, batch=False)
    s = coll.tick()
    assert [c.container for c in s.containers] == ["web-1"]


def test_rapl_meter_without_zones_is_a_config_error(tmp_path: Path) -> None:
    cfg = parse_config(
        SITE.format(idle="none", root=tmp_path).replace("cores: 2,", "cores: 2, meter: rapl,")
    )
    pub = Publisher("s", "127.0.0.1", 1, client_id="t")
    with pytest.raises(ConfigError, match="RAPL"):
        PowerCollector(cfg, "n1", pub, rapl_root=str(tmp_path / "none"))


def test_pick_node(tmp_path: Path) -> None:
    cfg = parse_config(SITE.format(idle="none", root=tmp_path))
    assert pick_node(cfg, None) == "n1"
    with pytest.raises(ConfigError, match="not in site.nodes"):
        pick_node(cfg, "zz")


# a template of batch on n1: replica slots w-1 and w-2 (cgroups e/worker-1, e/worker-2)
TEMPLATE_SITE = (
    SITE
    + """    templates:
      - id: w
        node: n1
        max_replicas: 2
        backend: {{type: cgroup_v1, cgroup: e/worker, root: {root}}}
"""
)


def test_a_running_replica_is_measured_and_its_energy_booked_to_its_app(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse_config(TEMPLATE_SITE.format(idle="equal", root=tmp_path))
    t = [0.0]
    proc = FakeProc()
    pub = Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)  # never connects
    coll = PowerCollector(cfg, "n1", pub, proc_stat=proc, clock=lambda: t[0], batch=False)
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", "0")
    write(tmp_path / "e/b-1/cpu.stat", "usage_usec 0\n")
    write(tmp_path / "cpuacct/e/worker-1/cpuacct.usage", "0")  # replica 1 runs, replica 2 not
    caplog.set_level("DEBUG", "ecovisor.collectors.power")
    coll.tick()
    # 20 s later: web-1 5 CPU-s, b-1 5, the replica w-1 10; the node 25 (5 outside)
    t[0], proc.value = 20.0, 125.0
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", str(5 * 10**9))
    write(tmp_path / "e/b-1/cpu.stat", "usage_usec 5000000\n")
    write(tmp_path / "cpuacct/e/worker-1/cpuacct.usage", str(10 * 10**9))
    s = coll.tick()
    by = {c.container: c for c in s.containers}
    assert sorted(by) == ["b-1", "w-1", "web-1"]  # w-2 not running: absent
    model = get_preset("ecovisor-microserver", 2)
    node_j = model.power_w(25 / (2 * 20)) * 20
    active, idle_each = node_j - model.idle_power_w * 20, model.idle_power_w * 20 / 3
    assert by["w-1"].app == "batch" and by["w-1"].cpu_s == pytest.approx(10.0)
    assert by["w-1"].energy_j == pytest.approx(active * 10 / 25 + idle_each, abs=2e-3)
    # only the CPU outside the three containers is the platform's
    platform_j = s.node.energy_j - sum(c.energy_j for c in s.containers)  # type: ignore[union-attr]
    assert platform_j == pytest.approx(active * 5 / 25, abs=3e-3)
    # a replica slot not running is normal: no warning, tick after tick
    coll.tick()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert sum("w-2" in r.getMessage() for r in caplog.records) == 1  # once, at debug level


def test_a_missing_configured_container_is_warned_about_once_a_missing_replica_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse_config(TEMPLATE_SITE.format(idle="none", root=tmp_path))
    pub = Publisher("s", "127.0.0.1", 1, client_id="t")
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", "0")
    write(tmp_path / "cpuacct/e/worker-1/cpuacct.usage", "0")
    coll = PowerCollector(cfg, "n1", pub, proc_stat=FakeProc(), clock=lambda: 0.0, batch=False)
    for _ in range(3):
        s = coll.tick()
    assert [c.container for c in s.containers] == ["web-1", "w-1"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["container b-1: no CPU counter (not running?)"]  # not w-2


KEPLER_NODE = (
    '# TYPE kepler_node_cpu_joules_total counter\nkepler_node_cpu_joules_total{{zone="package"}} '
    "{node}\n# TYPE kepler_node_cpu_idle_joules_total counter\n"
    'kepler_node_cpu_idle_joules_total{{zone="package"}} 40\n'
    "# TYPE kepler_container_cpu_joules_total counter\n"
)
KEPLER_CTR = 'kepler_container_cpu_joules_total{{container_name="{name}",zone="package"}} {j}\n'


def _kepler_collector(tmp_path: Path, scrape: list[str]) -> PowerCollector:
    site = TEMPLATE_SITE.format(idle="none", root=tmp_path).replace(
        "cores: 2,", 'cores: 2, meter: kepler, kepler_url: "http://127.0.0.1:1/metrics",'
    )
    pub = Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)  # never connects
    return PowerCollector(
        parse_config(site),
        "n1",
        pub,
        proc_stat=FakeProc(),
        scrape=lambda url: read_kepler(scrape[0]),
    )


def test_kepler_values_the_contract_refuses_are_skipped(tmp_path: Path) -> None:
    scrape = [""]
    coll = _kepler_collector(tmp_path, scrape)

    def tick(node: str, web: str, b: str) -> tuple[float | None, dict[str, float]]:
        scrape[0] = (
            KEPLER_NODE.format(node=node)
            + KEPLER_CTR.format(name="web-1", j=web)
            + KEPLER_CTR.format(name="b-1", j=b)
        )
        s = coll.tick()  # batch mode: one node batch
        rows = {c: j for b in s.batches for _, c, _, j in b.rows()}
        return (s.node.energy_j if s.node else None), rows

    assert tick("100", "NaN", "3") == (100.0, {"b-1": 3.0})  # a container's NaN
    assert tick("NaN", "5", "-1") == (None, {"web-1": 5.0})  # the node's NaN, a negative
    assert tick("120", "6", "1e16") == (120.0, {"web-1": 6.0})  # above the Counter bound
    assert tick("130", "7", "4") == (130.0, {"web-1": 7.0, "b-1": 4.0})  # good again


def test_kepler_energy_of_a_replica_is_published_under_its_id(tmp_path: Path) -> None:
    # Kepler names a container by its cgroup's last path element: replica 2's, worker-2
    text = KEPLER_NODE.format(node="100") + KEPLER_CTR.format(name="worker-2", j="8")
    coll = _kepler_collector(tmp_path, [text])
    (batch,) = coll.tick().batches
    assert list(batch.rows()) == [("batch", "w-2", 0.0, 8.0)]

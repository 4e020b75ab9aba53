"""Backends on FAKE cgroup trees (plain files in a temp dir laid out like cgroupfs):
the cgroup v2 backend is only tested this way here (this machine runs cgroup v1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecovisor.adapters.backends import BackendError
from ecovisor.adapters.cgroups import CgroupV1Backend, CgroupV2Backend
from ecovisor.adapters.lxd import allowance_to_cores, cores_to_allowance
from ecovisor.core.power_cap import cores_to_quota_us


def fake_v2(root: Path, path: str, cpu_max: str = "max 100000") -> Path:
    d = root / path
    d.mkdir(parents=True)
    (d / "cpu.max").write_text(cpu_max + "\n")
    (d / "cgroup.freeze").write_text("0\n")
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (d / "cgroup.procs").write_text("")
    return d


def fake_v1(root: Path, path: str) -> None:
    for c in ("cpu", "cpuacct", "freezer"):
        (root / c / path).mkdir(parents=True)
    (root / "cpu" / path / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / path / "cpu.cfs_period_us").write_text("50000\n")
    (root / "cpuacct" / path / "cpuacct.usage").write_text("1500000000\n")
    (root / "freezer" / path / "freezer.state").write_text("THAWED\n")


def test_v2_fake_tree_cpu_max_freeze_and_usage(tmp_path: Path) -> None:
    d = fake_v2(tmp_path, "ecovisor/web-1", "150000 100000")
    b = CgroupV2Backend("ecovisor/web-1", str(tmp_path))
    assert b.exists() and b.get_cpu_limit() == pytest.approx(1.5)
    assert b.set_cpu_limit(0.3) == pytest.approx(0.3)
    assert (d / "cpu.max").read_text() == "30000 100000"
    assert b.set_cpu_limit(None) is None and (d / "cpu.max").read_text() == "max 100000"
    assert b.set_cpu_limit(0.456789) == pytest.approx(0.45678)  # rounded down
    assert (d / "cpu.max").read_text() == "45678 100000"
    b.freeze()
    assert (d / "cgroup.freeze").read_text() == "1" and b.is_frozen()
    b.thaw()
    assert not b.is_frozen()
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")  # the kernel's confirmation
    assert b.is_frozen()
    assert b.usage_s() == pytest.approx(2.5)


def test_v2_missing_cgroup_is_a_backend_error(tmp_path: Path) -> None:
    b = CgroupV2Backend("nope", str(tmp_path))
    assert not b.exists()
    with pytest.raises(BackendError, match="does not exist"):
        b.set_cpu_limit(0.5)
    with pytest.raises(BackendError, match="does not exist"):
        b.freeze()
    fake_v2(tmp_path, "odd", "lots of cpu")
    with pytest.raises(BackendError, match="unexpected cpu.max"):
        CgroupV2Backend("odd", str(tmp_path)).get_cpu_limit()


def test_v1_fake_tree_quota_uses_the_configured_period(tmp_path: Path) -> None:
    fake_v1(tmp_path, "a/b")
    b = CgroupV1Backend("a/b", str(tmp_path))
    assert b.get_cpu_limit() is None
    assert b.set_cpu_limit(0.3) == pytest.approx(0.3)
    assert (tmp_path / "cpu/a/b/cpu.cfs_quota_us").read_text() == "15000"
    assert b.usage_s() == pytest.approx(1.5)
    assert b.set_cpu_limit(None) is None
    assert (tmp_path / "cpu/a/b/cpu.cfs_quota_us").read_text() == "-1"


def test_quota_and_allowance_conversions() -> None:
    assert cores_to_quota_us(0.3, 100_000) == 30_000
    assert cores_to_quota_us(0.001, 100_000) == 1_000  # the kernel's 1 ms minimum
    with pytest.raises(ValueError):
        cores_to_quota_us(0.0, 100_000)
    # one rounding rule for every backend: down (a cap stays a cap), float noise absorbed
    assert cores_to_quota_us(0.29, 100_000) == 29_000  # 0.29 * 100000 = 28999.99...
    assert cores_to_quota_us(0.456789, 100_000) == 45_678
    assert cores_to_quota_us(12_345 / 100_000, 100_000) == 12_345  # quota round trip
    assert cores_to_allowance(0.3) == "30ms/100ms"
    assert cores_to_allowance(0.49999) == "50ms/100ms"  # whole ms, the nearest
    assert cores_to_allowance(0.0004) == "1ms/100ms"  # the kernel's 1 ms minimum
    assert allowance_to_cores("25ms/100ms") == pytest.approx(0.25)
    assert allowance_to_cores("50%") is None  # a soft share, not a limit
    assert allowance_to_cores(None) is None
    with pytest.raises(BackendError):
        allowance_to_cores("fast/slow")

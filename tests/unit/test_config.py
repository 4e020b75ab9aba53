from pathlib import Path

import pytest

from ecovisor.contract.config_file import ConfigError, load_config, parse_config

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml"

MINIMAL = """
site:
  id: s1
  nodes: [{id: n1, cores: 2}]
apps:
  - id: a
    token: aaaaaaaaaaaa
    containers:
      - {id: a-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/a-1}}
"""


def test_demo_config_is_valid() -> None:
    cfg = load_config(DEMO)
    assert {a.id for a in cfg.apps} == {"web", "batch"}
    assert cfg.owner_of("web-1") == "web"
    assert cfg.owner_of("batch-1") == "batch"
    assert cfg.app_for_token(cfg.app("web").token).id == "web"


def test_minimal_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.site.shape.tick_s == 1.0
    assert cfg.app("a").shares.reserve_soc == 0.30
    assert cfg.app_for_token("wrong-token") is None


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        (("cores: 2", "cores: 0"), "site.nodes.0.cores"),
        (("node: n1,", "node: nX,"), "unknown node 'nX'"),
        (("token: aaaaaaaaaaaa", "token: short"), "apps.0.token"),
        (("type: cgroup_v1, cgroup: eco/a-1", "type: lxd"), "needs 'instance'"),
        (("id: a\n", "id: A!\n"), "apps.0.id"),
    ],
)
def test_errors_are_readable(patch: tuple[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(MINIMAL.replace(*patch))
    assert needle in str(e.value)


def test_shares_cannot_exceed_site() -> None:
    text = MINIMAL.replace(
        "token: aaaaaaaaaaaa", "token: aaaaaaaaaaaa\n    shares: {solar_fraction: 0.7}"
    )
    text += """  - id: b
    token: bbbbbbbbbbbb
    shares: {solar_fraction: 0.6}
"""
    with pytest.raises(ConfigError, match="solar fractions"):
        parse_config(text)


@pytest.mark.parametrize(
    ("site", "needle"),
    [
        ("grace_s: .inf", "site.grace_s"),
        ("grace_s: 1.0e9", "site.grace_s"),
        ("shape: {tick_s: 1.0e-7}", "site.shape.tick_s"),
        ("shape: {tick_s: .nan}", "site.shape.tick_s"),
        # the ledger's own check of the shares on the site's shape: at a 1 h tick the
        # solar headroom of a 600 W array leaves a 1 Wh battery no usable capacity
        ("shape: {tick_s: 3600, solar_nameplate_w: 600, battery_capacity_wh: 1}",
         "site: a: battery share"),
    ],
)  # fmt: skip
def test_values_the_ledger_cannot_run_are_config_errors(site: str, needle: str) -> None:
    """These passed the configuration and then crashed the ledger at its start (exit 1,
    a crash loop under a supervisor) instead of a configuration error (exit 2)."""
    text = MINIMAL.replace("  id: s1\n", f"  id: s1\n  {site}\n")
    if "battery_capacity_wh" in site:
        text = text.replace("token: aaaaaaaaaaaa", "token: aaaaaaaaaaaa\n    shares: "
                            "{battery_capacity_wh: 1, solar_fraction: 1}")  # fmt: skip
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert needle in str(e.value)


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A_TOKEN", "from-the-environment")
    cfg = parse_config(MINIMAL.replace("aaaaaaaaaaaa", "${A_TOKEN}"))
    assert cfg.app("a").token == "from-the-environment"
    monkeypatch.delenv("A_TOKEN")
    with pytest.raises(ConfigError, match="A_TOKEN is not set"):
        parse_config(MINIMAL.replace("aaaaaaaaaaaa", "${A_TOKEN}"))


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("site: [")
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")


TEMPLATES = (
    MINIMAL
    + """    templates:
      - {id: w, node: n1, max_replicas: 2, backend: {type: process, cgroup: eco/w}}
      - {id: x, node: n1, max_replicas: 1, backend: {type: lxd, instance: x}}
"""
)


def test_placements_are_the_one_placement_and_replica_rule() -> None:
    cfg = parse_config(TEMPLATES)
    assert sorted(cfg.placements()) == ["a-1", "w-1", "w-2", "x-1"]
    w2 = cfg.locate("w-2")
    assert w2 is not None and (w2.app, w2.node, w2.template, w2.replica) == ("a", "n1", "w", 2)
    assert (w2.backend.type, w2.backend.cgroup) == ("process", "eco/w-2")
    x1 = cfg.locate("x-1")
    assert x1 is not None and x1.backend.instance == "x-1"  # a copy of instance x
    a1 = cfg.locate("a-1")
    assert a1 is not None and a1.backend.cgroup == "eco/a-1" and a1.template is None
    assert cfg.locate("w-3") is None  # beyond max_replicas: nobody's
    app, tpl = cfg.template("w")
    assert app.id == "a" and tpl.replica_id(1) == "w-1"
    with pytest.raises(KeyError):
        cfg.template("a-1")
    # owner_of names configured containers only (the API tells a replica apart)
    assert cfg.owner_of("a-1") == "a" and cfg.owner_of("w-1") is None


def test_cap_quota_counts_configured_containers_and_the_container_itself() -> None:
    text = TEMPLATES.replace(
        "site:\n  id: s1", "site:\n  id: s1\n  shape: {idle_attribution: equal}"
    )
    cfg = parse_config(text)
    assert cfg.idle_sharers("a-1") == {"a-1": 1.0}
    assert cfg.idle_sharers("w-2") == {"a-1": 1.0, "w-2": 1.0}
    with pytest.raises(KeyError):
        cfg.idle_sharers("nope")
    # microserver over 2 cores: 1.35 W idle shared by a-1 and w-2
    q = cfg.cap_quota("w-2", 0.675 + 1.825 * 0.5)
    assert q.idle_share_w == pytest.approx(0.675) and abs(q.quota_us - 50_000) <= 1
    assert cfg.node("n1").model() == cfg.site.nodes[0].model()


def test_a_solar_source_needs_a_nameplate() -> None:
    """The ledger bounds solar counters by the nameplate: at 0 W it would refuse all of
    the array's energy, so the configuration says so up front."""
    import pytest as _pytest

    from ecovisor.contract.config_file import ConfigError, parse_config

    site = """
site:
  id: s
  shape: {tick_s: 1.0, solar_nameplate_w: %s}
  solar: {type: trace}
"""
    with _pytest.raises(ConfigError, match="solar_nameplate_w"):
        parse_config(site % "0")
    assert parse_config(site % "20").site.shape.solar_nameplate_w == 20


@pytest.mark.parametrize("name", ["examples/demo-site.yaml", "deploy/compose-site.yaml"])
def test_the_c_loader_reads_the_shipped_sites_as_pyyaml_does(name: str) -> None:
    """parse_config reads with libyaml's safe loader when PyYAML has it: the shipped
    site files read as with the pure-Python one (which it falls back to)."""
    import yaml

    from ecovisor.contract import config_file

    text = (Path(__file__).resolve().parents[2] / name).read_text()
    pure = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - a safe loader
    assert yaml.load(text, Loader=config_file._SAFE_LOADER) == pure  # noqa: S506
    assert config_file._SAFE_LOADER is getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def test_an_undecodable_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A byte that is not UTF-8 in an expanded variable: a one-line error, not a
    traceback (libyaml cannot encode the lone surrogate Python decodes it to)."""
    import os

    monkeypatch.setitem(os.environb, b"A_TOKEN", b"token-\xff-abc")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(MINIMAL.replace("aaaaaaaaaaaa", "${A_TOKEN}"))


# --- the workloads' uid: EcovisorConfig.workload_uid --------------------------------------

TWO_APPS = MINIMAL + "  - id: b\n    token: bbbbbbbbbbbb\n"


def with_uid(text: str, app_token: str, uid: object) -> str:
    """``text`` with ``run_as_uid: uid`` on the app whose token is ``app_token``."""
    return text.replace(f"token: {app_token}", f"token: {app_token}\n    run_as_uid: {uid}")


def test_workload_uids_are_stable_distinct_and_in_their_range() -> None:
    demo = load_config(DEMO)
    # pinned: a running workload keeps its uid across versions and restarts
    assert demo.workload_uid("web") == 214417 and demo.workload_uid("batch") == 221204
    cfg = parse_config(TWO_APPS)
    uids = {a: cfg.workload_uid(a) for a in ("a", "b")}
    assert len(set(uids.values())) == 2
    assert all(200_000 <= u < 265_536 for u in uids.values())
    # a function of the app's own id: adding, removing or reordering apps moves no uid
    assert parse_config(MINIMAL).workload_uid("a") == uids["a"]
    more = TWO_APPS + "  - id: aa\n    token: cccccccccccc\n"
    assert {a: parse_config(more).workload_uid(a) for a in ("a", "b")} == uids
    with pytest.raises(KeyError):
        cfg.workload_uid("nobody")


@pytest.mark.parametrize(
    ("uid", "needle"),
    [
        ("0", "greater than or equal to 1000"),  # root: no escape hatch
        ("999", "greater than or equal to 1000"),
        ("-1", "greater than or equal to 1000"),
        ("65534", "shared by other programs"),
        ("2147483647", "less than or equal to 2147483646"),
        ("web", "valid integer"),
    ],
)
def test_run_as_uid_is_bounded(uid: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config(with_uid(MINIMAL, "aaaaaaaaaaaa", uid))


def test_run_as_uid_overrides_and_two_apps_on_one_uid_are_refused() -> None:
    assert parse_config(with_uid(MINIMAL, "aaaaaaaaaaaa", 4000)).workload_uid("a") == 4000
    same = with_uid(with_uid(TWO_APPS, "aaaaaaaaaaaa", 5000), "bbbbbbbbbbbb", 5000)
    with pytest.raises(ConfigError, match="'a' and 'b' would run their workloads as the same"):
        parse_config(same)
    # pinning one app on another's default uid is a clash too
    a_default = parse_config(MINIMAL).workload_uid("a")
    with pytest.raises(ConfigError, match=f"same uid {a_default}"):
        parse_config(with_uid(TWO_APPS, "bbbbbbbbbbbb", a_default))


def test_the_command_rate_follows_the_apps_size_unless_set() -> None:
    """A policy may command every container slot and its app once a tick: the default
    rate allows that twice over (a fixed 50/s refused a 100-container app's caps)."""
    text = MINIMAL.replace("  nodes:", "  shape: {tick_s: 2.0}\n  nodes:")
    text += ("    templates: [{id: w, node: n1, max_replicas: 4,"
             " backend: {type: cgroup_v1, cgroup: eco/w}}]\n")  # fmt: skip
    cfg = parse_config(text)
    assert cfg.command_rate("a") == (2.0 * (1 + 4 + 1) / 2.0, 2 * 2 * 6 + 20)
    limited = parse_config(text.replace("  id: s1\n", "  id: s1\n  limits: "
                                        "{max_commands_per_s: 3, command_burst: 7}\n"))  # fmt: skip
    assert limited.command_rate("a") == (3.0, 7)

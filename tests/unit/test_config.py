from pathlib import Path

import pytest

from ecovisor.contract.config import ConfigError, load_config, parse_config

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

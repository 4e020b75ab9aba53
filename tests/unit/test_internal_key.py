"""The site's internal key: read from the environment or the site file, generated once
by the embedded stack (never handed to app code), sent by the API to the ledger views."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from ecovisor.api.state_source import HttpStateSource
from ecovisor.contract.config_file import load_config, parse_config
from ecovisor.contract.environment import internal_key
from ecovisor.embedded import plan as embedded_plan

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml"
SITE = "site: {id: s}\n"


def test_key_from_environment_then_site_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECOVISOR_INTERNAL_KEY", raising=False)
    assert internal_key(parse_config(SITE)) is None
    cfg = parse_config("site: {id: s, internal_key: literal-key-0123456789}\n")
    assert internal_key(cfg) == "literal-key-0123456789"
    assert "literal-key" not in repr(cfg)  # never in logs
    monkeypatch.setenv("ECOVISOR_INTERNAL_KEY", "env-key-0123456789")
    assert internal_key(cfg) == "env-key-0123456789"


def test_embedded_stack_generates_one_key_and_keeps_it_from_app_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECOVISOR_INTERNAL_KEY", raising=False)
    cfg = load_config(DEMO)
    p = embedded_plan.plan(cfg, DEMO, tmp_path, python="py", exists=lambda _m: True)
    key = p.env["ECOVISOR_INTERNAL_KEY"]
    f = tmp_path / "internal.key"
    assert len(key) == 64 and f.read_text().strip() == key
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    again = embedded_plan.plan(cfg, DEMO, tmp_path, python="py", exists=lambda _m: True)
    assert again.env["ECOVISOR_INTERNAL_KEY"] == key  # stable across `ecovisor up`
    by = {s.name: s for s in p.services}
    assert by["ledger"].command[0] == "py" and by["api"].command[0] == "py"
    assert by["container-web-1"].command[:3] == ["env", "-u", "ECOVISOR_INTERNAL_KEY"]


def test_the_api_sends_the_sites_key_to_the_views(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's entry point hands the site's key (contract.environment.internal_key, so any
    configured variable name or the literal) to its state source, which sends it."""
    monkeypatch.delenv("ECOVISOR_INTERNAL_KEY", raising=False)
    monkeypatch.setenv("SITE_KEY", "env-key-0123456789")
    cfg = parse_config("site: {id: s, internal_key_env: SITE_KEY}\n")
    seen: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers.get("Authorization"))
        return httpx.Response(200, json={"entries": []})

    async def go() -> None:
        src = HttpStateSource("http://ledger", key=internal_key(cfg))
        src._http._transport = httpx.MockTransport(handler)
        now = datetime.now(UTC)
        await src.ledger("web", now, now)
        await src.aclose()

    asyncio.run(go())
    assert seen == ["Bearer env-key-0123456789"]

"""``ecovisor sci``: an app's Software Carbon Intensity, (E·I + M) / R, between two
times, read from the REST API with the app's token (``GET /v1/apps/{app}/sci``,
docs/api.md#sci). See docs/cli.md."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import httpx
import typer

from ecovisor.cli.options import ConfigOpt, fail, has_config, load
from ecovisor.client import EcovisorClient, EcovisorError


def _time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:  # a traceback before
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no time zone (e.g. 2024-06-01T12:00:00Z)")
    return t


def sci(
    t1: Annotated[str, typer.Option("--t1", help="interval start, ISO 8601 with zone")],
    t2: Annotated[str, typer.Option("--t2", help="interval end, ISO 8601 with zone")],
    token: Annotated[
        str,
        typer.Option(
            "--token", envvar="ECOVISOR_TOKEN", help="the app's token", show_default=False
        ),
    ],  # fmt: skip
    functional_units: Annotated[
        float, typer.Option("--functional-units", "-r", min=0.0, help="R, units in the interval")
    ] = 1.0,
    api: Annotated[
        str | None,
        typer.Option("--api", help="API base URL (default: the config's stack.api_port)"),
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
) -> None:
    """The token's app's SCI = (E·I + M) / R between --t1 and --t2 (g CO2eq per unit)."""
    if functional_units <= 0:
        raise fail("--functional-units must be positive")
    if api is None:
        port = load(config)[0].stack.api_port if has_config(config) else 18080
        api = f"http://127.0.0.1:{port}"
    try:
        with EcovisorClient(api, token) as c:
            r = c.get_app_sci(_time(t1), _time(t2), functional_units)
    except EcovisorError as e:
        raise fail(f"{e.status}: {e.reason}") from None
    except httpx.HTTPError as e:  # not reachable, timeout
        raise fail(f"API not reachable at {api}: {e}") from None
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    typer.echo(
        f"{r['app']}  {r['t1']} .. {r['t2']}  ({r['interval_s']:g} s)\n"
        f"  E·I (operational)  {r['operational_g']:.6g} g  ({r['energy_j']:.6g} J)\n"
        f"  M   (embodied)     {r['embodied_g']:.6g} g\n"
        f"  R                  {r['functional_units']:g}\n"
        f"  SCI                {r['sci_g_per_unit']:.6g} gCO2eq/unit"
    )

"""``LedgerClient``: what a policy runner needs of ``ecovisor.client``, answered in
process by the ledger's state machine (``SiteLedger``): the core replay engine's stand-in
for the API (replay/engine.py, docs/evaluation.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ecovisor.api.emulation_signal import Forecast, forecast_of_view
from ecovisor.api.forecasts import carbon_answer, solar_answer
from ecovisor.api.state_source import live_state_from_view
from ecovisor.contract.commands import COMMAND_TYPES, command_fields, sign_command
from ecovisor.contract.experiment import TOKEN
from ecovisor.core.units import US_PER_S
from streams.ledger_views import state_view
from streams.ledger_worker import SiteLedger


@dataclass
class Ref:
    command_id: str


class LedgerClient:
    """What a policy runner needs of ``ecovisor.client``: ``command(type, **fields)`` and
    one method per command named after it, here publishing straight into the ledger's
    ``SiteLedger.command`` (the validation, settings and actions of the live ledger).
    Commands are stamped 1 µs before the end of the tick whose notification caused
    them, so settings apply from the next tick, as do the containers' actions."""

    def __init__(self, led: SiteLedger, app: str, on_out: Callable[[Any], None]) -> None:
        self.led, self.app, self.on_out = led, app, on_out
        self.site = led.cfg.site.id
        self.now_us = 0
        self.n = 0

    def command(self, type: str, **fields: Any) -> Ref:
        cls = COMMAND_TYPES[type]
        self.n += 1
        cmd = sign_command(
            cls(
                site=self.site,
                time=datetime.fromtimestamp((self.now_us - 1) / US_PER_S, UTC),
                app=self.app,
                command_id=f"r{self.n}",
                **fields,
            ),
            TOKEN,
        )
        for o in self.led.command(cmd.to_json(), self.now_us):
            self.on_out(o)
        return Ref(cmd.command_id)

    def __getattr__(self, name: str) -> Callable[..., Ref]:
        cls = COMMAND_TYPES.get(name)
        if cls is None:
            raise AttributeError(name)
        names = list(command_fields(cls))
        return lambda *args: self.command(name, **dict(zip(names, args, strict=False)))

    def get_carbon_forecast(self) -> dict[str, Any]:
        """``GET /v1/apps/{app}/carbon_forecast``: the route's answer from the ledger's
        kept forecast (the whole forecast: the route's own, not an emulation's window)."""
        return carbon_answer(self.app, self._forecast("carbon")).model_dump(mode="json")

    def get_solar_forecast(self) -> dict[str, Any]:
        """``GET /v1/apps/{app}/solar_forecast``, as ``get_carbon_forecast``."""
        return solar_answer(self.app, self._forecast("solar")).model_dump(mode="json")

    def _forecast(self, kind: str) -> Forecast:
        """The kept forecast as the API reads it from the ledger's state view (only its
        ``<kind>_forecast`` part: the rest of the view is not read)."""
        return forecast_of_view({f"{kind}_forecast": self.led.forecast_view(kind)}, kind)

    def get_state(self) -> dict[str, Any]:
        """``GET /v1/apps/{app}/state``: the ledger's state view as the API normalises
        it (``LiveState``), app metrics included."""
        view = state_view(self.led, self.app) or {}
        return live_state_from_view(self.app, view).model_dump(mode="json")

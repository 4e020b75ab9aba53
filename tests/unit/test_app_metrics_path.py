"""An app's own metrics (AppMetricsTelemetry, named fields and ``extra``) reach the
API's state — what ``policies.base.api_metrics`` hands to a policy — through the
ledger: the tick clock keeps them with the tick, the state view serves them, the API
flattens ``extra``. (Extra metrics such as ``latency_p95_ms`` or ``stragglers`` were
once dropped by the tick clock, so policies reading them saw nothing.)"""

from datetime import UTC, datetime, timedelta

from ecovisor.api.state_source import live_state_from_view
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.telemetry import AppMetricsTelemetry, CarbonTelemetry
from ecovisor.core.tick_clock import to_us
from streams.ledger_views import state_view
from streams.ledger_worker import SiteLedger
from tests.fakes.sites import TWO_APPS

T = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_extra_app_metrics_reach_the_api_state() -> None:
    led = SiteLedger.new(parse_config(TWO_APPS))
    for seq, t in enumerate((T, T + timedelta(seconds=0.5))):
        c = CarbonTelemetry(site="s1", time=t, source="co2", seq=seq, intensity_g_per_kwh=100.0)
        led.ingest(c, to_us(t.timestamp()), None)
    m = AppMetricsTelemetry(site="s1", time=T + timedelta(seconds=0.5), source="app-web", seq=1,
                            app="web", latency_ms=12.0, functional_units_total=7.0,
                            extra={"latency_p95_ms": 40.0, "stragglers": 2.0})  # fmt: skip
    assert led.ingest(m, to_us(m.time.timestamp()), None) is None
    led.close(to_us((T + timedelta(seconds=30)).timestamp()))
    st = live_state_from_view("web", state_view(led, "web"))
    assert st.app_metrics == {"latency_ms": 12.0, "functional_units_total": 7.0, "progress": None,
                              "latency_p95_ms": 40.0, "stragglers": 2.0}  # fmt: skip

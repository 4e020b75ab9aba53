"""Battery charge controller DEVICE STAND-IN (a simulation, not hardware).

It plays the site's physical battery and its charge controller: it receives aggregate
``BatterySetpoint`` JSON over MQTT on ``ecovisor/<site>/control/battery/<device>`` and
publishes ``BatteryTelemetry`` every tick. A real adapter (for example a Tesla Powerwall
or a SunSpec storage client) implements the same ``BatteryController`` interface.

Setpoint semantics (what the ledger's multiplexer sends):
- ``charge_rate_w`` > 0: grid-side controller, charge at this rate until full (then the
  rate resets to 0); the battery does not discharge meanwhile.
- ``net_power_w`` > 0: power offered to the battery (solar surplus), charged automatically
  by the solar-side controller within the C-rate and room; the rest is curtailed.
- ``net_power_w`` < 0: power requested from the battery, limited by ``max_discharge_w``,
  the discharge C-rate and the minimum state of charge.
A new setpoint takes effect ``latency_s`` after it is received (controller latency).

Run: ``python -m collectors.battery_device --config site.yaml`` (section ``site.battery``,
type ``simulated``). See docs/collectors/battery_device.md.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import Field, ValidationError

from collectors.common import Options, SourceKind, cli_main, make_publisher, run_every
from ecovisor.adapters.mqtt import connect_in_background, mqtt_client
from ecovisor.contract import topics
from ecovisor.contract.actuation import BatterySetpoint, verify
from ecovisor.contract.bus_access import device_username, mqtt_credentials, site_source_id
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.environment import internal_key, mqtt_endpoint
from ecovisor.contract.operator_messages import describe_validation_error
from ecovisor.contract.telemetry import BatteryTelemetry
from ecovisor.core.recent_ids import RecentIds

log = logging.getLogger("ecovisor.collectors.battery_device")
_EPS_WH = 1e-9


class SimulatedOptions(Options):
    capacity_wh: float | None = Field(
        None, gt=0, description="default: site.shape.battery_capacity_wh"
    )
    initial_soc: float = Field(0.5, ge=0, le=1)
    min_soc: float = Field(0.30, ge=0, lt=1, description="the controller never goes below")
    charge_c_rate: float = Field(0.25, gt=0, description="max charge W = C-rate x Wh")
    discharge_c_rate: float = Field(1.0, gt=0, description="max discharge W = C-rate x Wh")
    charge_efficiency: float = Field(1.0, gt=0, le=1)
    discharge_efficiency: float = Field(1.0, gt=0, le=1)
    latency_s: float = Field(0.0, ge=0, description="setpoint -> effect delay")
    tick_s: float | None = Field(None, gt=0, description="default: site.shape.tick_s")


SOURCE = SourceKind("battery", {"simulated": SimulatedOptions})
validate_options = SOURCE.validate  # for ``ecovisor config check``


# --------------------------------------------------------------------------------------
# The interface a real adapter implements
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatteryState:
    """What the controller reports: the fields of ``BatteryTelemetry``, by name."""

    stored_wh: float
    capacity_wh: float
    power_w: float  # + charging (input), - discharging (output)
    charge_setpoint_w: float
    max_discharge_setpoint_w: float
    curtailed_w: float


class BatteryController(ABC):
    """A battery charge controller: accepts setpoints, reports its state."""

    @abstractmethod
    def receive(self, setpoint: BatterySetpoint, now_s: float) -> None:
        """A setpoint arrived at monotonic time ``now_s``."""

    @abstractmethod
    def step(self, now_s: float, dt_s: float) -> BatteryState:
        """Advance to ``now_s`` (the last ``dt_s`` seconds) and report the state."""


# --------------------------------------------------------------------------------------
# Pure simulation (no I/O, no clock: times are passed in)
# --------------------------------------------------------------------------------------


@dataclass
class SimulatedBattery(BatteryController):
    capacity_wh: float
    stored_wh: float
    min_soc: float = 0.30
    charge_c_rate: float = 0.25
    discharge_c_rate: float = 1.0
    charge_efficiency: float = 1.0
    discharge_efficiency: float = 1.0
    latency_s: float = 0.0
    charge_rate_w: float = 0.0
    max_discharge_w: float | None = None  # None: the C-rate limit
    net_power_w: float = 0.0
    _pending: list[tuple[float, BatterySetpoint]] = field(default_factory=list)
    # setpoint ids for QoS 1 redelivery, one per tick forever: the last 100,000 only
    _seen: RecentIds = field(default_factory=RecentIds)

    @classmethod
    def from_options(cls, opts: SimulatedOptions, capacity_wh: float) -> SimulatedBattery:
        # the options name the battery's parameters; capacity and initial charge resolved
        params = opts.model_dump(exclude={"capacity_wh", "initial_soc", "tick_s"})
        return cls(capacity_wh=capacity_wh, stored_wh=capacity_wh * opts.initial_soc, **params)

    @property
    def max_charge_w(self) -> float:
        return self.charge_c_rate * self.capacity_wh

    @property
    def max_discharge_limit_w(self) -> float:
        return self.discharge_c_rate * self.capacity_wh

    @property
    def reserve_wh(self) -> float:
        return self.min_soc * self.capacity_wh

    @property
    def full(self) -> bool:
        return self.stored_wh >= self.capacity_wh - _EPS_WH

    def receive(self, setpoint: BatterySetpoint, now_s: float) -> None:
        if setpoint.command_id in self._seen:  # QoS 1 redelivery
            return
        self._seen.add(setpoint.command_id)
        self._pending.append((now_s + self.latency_s, setpoint))

    def _apply_due(self, now_s: float) -> None:
        due = [sp for t, sp in self._pending if t <= now_s]
        self._pending = [(t, sp) for t, sp in self._pending if t > now_s]
        for sp in due:
            self.charge_rate_w = sp.charge_rate_w
            self.max_discharge_w = sp.max_discharge_w
            self.net_power_w = sp.net_power_w

    def step(self, now_s: float, dt_s: float) -> BatteryState:
        self._apply_due(now_s)
        dt_h = dt_s / 3600.0
        offered = max(0.0, self.net_power_w)
        power = 0.0
        curtailed = 0.0
        if self.charge_rate_w > 0 or offered > 0:
            # Grid-side (commanded rate) and solar-side (offered surplus) charging,
            # both within the C-rate and the room left.
            room_w = (self.capacity_wh - self.stored_wh) / (self.charge_efficiency * dt_h)
            power = max(0.0, min(max(self.charge_rate_w, offered), self.max_charge_w, room_w))
            curtailed = max(0.0, offered - power)
            self.stored_wh = min(
                self.capacity_wh, self.stored_wh + power * self.charge_efficiency * dt_h
            )
            if self.full and self.charge_rate_w > 0:
                self.charge_rate_w = 0.0  # "charge at this rate until full"
        elif self.net_power_w < 0:
            limit = self.max_discharge_limit_w
            if self.max_discharge_w is not None:
                limit = min(limit, self.max_discharge_w)
            avail_w = max(0.0, self.stored_wh - self.reserve_wh) * self.discharge_efficiency / dt_h
            out = min(-self.net_power_w, limit, avail_w)
            self.stored_wh = max(
                self.reserve_wh, self.stored_wh - out / self.discharge_efficiency * dt_h
            )
            power = -out
        return BatteryState(
            stored_wh=self.stored_wh,
            capacity_wh=self.capacity_wh,
            power_w=power,
            charge_setpoint_w=self.charge_rate_w,
            max_discharge_setpoint_w=(
                self.max_discharge_limit_w if self.max_discharge_w is None else self.max_discharge_w
            ),
            curtailed_w=curtailed,
        )


# --------------------------------------------------------------------------------------
# The device process: MQTT in (setpoints), MQTT out (telemetry)
# --------------------------------------------------------------------------------------


class BatteryDevice:
    """Binds a BatteryController to MQTT: subscribes to setpoints, publishes telemetry."""

    def __init__(
        self,
        cfg: EcovisorConfig,
        controller: BatteryController,
        device_id: str,
        tick_s: float,
        clock: Any = time.monotonic,
    ) -> None:
        self.cfg, self.controller, self.device_id, self.tick_s = cfg, controller, device_id, tick_s
        self.clock = clock
        self._lock = threading.Lock()
        self.rejected = 0
        self.key = internal_key(cfg)  # with a key, only the ledger's signed setpoints act
        username = device_username(device_id)
        self.publisher = make_publisher(cfg, "battery_device", device_id, username)
        self.control_topic = topics.mqtt_battery_control(cfg.site.id, device_id)
        self._sub = mqtt_client(
            f"ecovisor-{cfg.site.id}-battery-device-{device_id}-control",
            credentials=mqtt_credentials(cfg, username),
        )
        self._sub.on_connect = lambda c, u, f, rc, p: c.subscribe(self.control_topic, qos=1)
        self._sub.on_message = self._on_setpoint
        self._last = clock()

    def _on_setpoint(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            sp = BatterySetpoint.model_validate_json(msg.payload)
        except ValidationError as e:
            self.rejected += 1
            log.warning("ignored invalid setpoint: %s", describe_validation_error(e))
            return
        if sp.site != self.cfg.site.id:
            self.rejected += 1
            log.warning("ignored setpoint for site %r", sp.site)
            return
        if self.key is not None and not verify(sp, self.key):
            # only the ledger signs setpoints: whoever else reaches the control topic
            # cannot drive the battery (docs/reliability.md#authentication-on-the-bus)
            self.rejected += 1
            log.warning("ignored setpoint %s: bad or missing signature", sp.command_id)
            return
        with self._lock:
            self.controller.receive(sp, self.clock())

    def start(self) -> BatteryDevice:
        connect_in_background(self._sub, *mqtt_endpoint(self.cfg))
        self.publisher.start()
        return self

    def tick(self) -> BatteryTelemetry | None:
        now = self.clock()
        with self._lock:
            st = self.controller.step(now, now - self._last)
        self._last = now
        return self.publisher.publish(  # type: ignore[return-value]
            BatteryTelemetry, self.device_id, **asdict(st)
        )

    def close(self) -> None:
        self._sub.disconnect()
        self._sub.loop_stop()
        self.publisher.close()


def build(cfg: EcovisorConfig) -> BatteryDevice:
    src = cfg.site.battery
    opts = validate_options(src)
    assert isinstance(opts, SimulatedOptions) and src is not None
    capacity = opts.capacity_wh or cfg.site.shape.battery_capacity_wh
    if capacity <= 0:
        raise ConfigError(
            "site.battery: capacity is 0; set options.capacity_wh or site.shape.battery_capacity_wh"
        )
    device_id = site_source_id(cfg, "battery")
    controller = SimulatedBattery.from_options(opts, capacity)
    return BatteryDevice(cfg, controller, device_id, opts.tick_s or cfg.site.shape.tick_s)


def _run(cfg: EcovisorConfig, args: argparse.Namespace, stop: threading.Event) -> None:
    dev = build(cfg).start()
    log.info(
        "SIMULATED battery device %s: listening on %s, telemetry every %.3g s",
        dev.device_id,
        dev.control_topic,
        dev.tick_s,
    )
    try:
        run_every(dev.tick_s, stop, dev.tick)
    finally:
        dev.close()


def main(argv: list[str] | None = None) -> int:
    return cli_main("battery_device", argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``site`` section of the site configuration: the site's nodes (and their power
model), its solar, carbon and battery sources, its limits at the edge, its embodied
hardware and its internal key; and the base of every section. See
docs/configuration.md."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecovisor.contract.envelope import Ident
from ecovisor.core.power_model import AnyPowerModel, PowerModelSpec
from ecovisor.core.shares import SiteShape
from ecovisor.core.units import MAX_MAGNITUDE

ENV_INTERNAL_KEY = "ECOVISOR_INTERNAL_KEY"


class StrictModel(BaseModel):
    """The base of every section of the site configuration: unknown keys are errors,
    values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(StrictModel):
    id: Ident
    cores: int = Field(ge=1)
    power_model: PowerModelSpec = PowerModelSpec(preset="ecovisor-microserver")
    meter: Literal["model", "rapl", "kepler"] = "model"
    kepler_url: str | None = None
    credential: str | None = Field(
        None,
        min_length=8,
        max_length=4096,
        repr=False,
        description="MQTT password of this device (default: derived from the internal key)",
    )

    @model_validator(mode="after")
    def _resolves(self) -> NodeConfig:
        self.model()  # a model that cannot be resolved is a configuration error, at load
        return self

    def model(self) -> AnyPowerModel:
        """The node's power model: the one definition the collectors, the ledger's cap
        validation and the actuators use (its configured cores override the preset's).
        Never raises for a loaded configuration (checked at load)."""
        return self.power_model.resolve(self.cores)


class SourceConfig(StrictModel):
    """An edge collector or device: its type and type-specific options (validated by the
    collector itself at start and by ``ecovisor config check``)."""

    type: str
    id: Ident | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    credential: str | None = Field(
        None,
        min_length=8,
        max_length=4096,
        repr=False,
        description="MQTT password of this device (default: derived from the internal key)",
    )


class SiteLimits(StrictModel):
    """Bounds at the edge: a message or request outside them is refused (422 or a dead
    letter) with the reason, so no single message can stop the ledger (docs/reliability.md)."""

    # at most the contract's static ceiling, which no command can pass anyway
    max_carbon_budget_g: float = Field(
        1.0e6, gt=0, le=MAX_MAGNITUDE, description="ceiling of set_carbon_budget grams per period"
    )
    max_carbon_rate_mg_per_s: float = Field(
        1.0e6, gt=0, le=MAX_MAGNITUDE, description="ceiling of set_carbon_rate mg/s"
    )
    clock_skew_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="telemetry event time at most this far ahead of the site's clock",
    )
    max_message_bytes: int = Field(
        65_536, ge=1_024, le=900_000, description="largest telemetry or command payload"
    )
    max_sources: int = Field(
        1_000,
        ge=1,
        le=1_500,
        description="telemetry sources the ledger tracks per site (the snapshot stays < 1 MB)",
    )
    source_expiry_s: float = Field(
        3_600.0,
        gt=0,
        le=604_800,
        description="a source silent this long is forgotten (its dedupe state)",
    )
    replay_clock_source: Ident | None = Field(
        None, description="the only source whose clock messages are accepted (None: none)"
    )
    clock_max_step_s: float = Field(
        86_400.0, gt=0, le=366 * 86_400, description="largest advance of one clock message"
    )
    # an accepted command costs the ledger a snapshot of the site: one app's flood must
    # not stall every site of its worker. None: from the app's size (EcovisorConfig.
    # command_rate), enough for a command per container every tick
    max_commands_per_s: float | None = Field(
        None, gt=0, le=100_000, allow_inf_nan=False,
        description="commands one app may send through the API per second, on average "
        "(None: two per container slot and tick)",
    )  # fmt: skip
    command_burst: int | None = Field(
        None, ge=1, le=1_000_000,
        description="commands one app may send at once (None: two ticks' worth, + 20)",
    )  # fmt: skip


class EmbodiedHardware(StrictModel):
    """One piece of hardware for the embodied term M of SCI (docs/configuration.md):
    its embodied carbon, its lifetime (the time share of an interval is
    interval / lifetime) and how it is shared by the apps (the resource share)."""

    name: Ident
    node: Ident | None = Field(None, description="the node it is; None: the whole site")
    embodied_kg: float = Field(ge=0, le=1_000_000, description="kgCO2eq, manufacture")
    lifetime_years: float = Field(gt=0, le=50)
    share: Literal["containers", "equal"] = Field(
        "containers",
        description="containers: by the number of the app's configured containers on it "
        "(their size is not counted); "
        "equal: equally among the apps with a container on it",
    )


class EmbodiedConfig(StrictModel):
    hardware: list[EmbodiedHardware] = Field(default_factory=list, max_length=1024)


class SiteConfig(StrictModel):
    id: Ident
    shape: SiteShape = SiteShape()
    nodes: list[NodeConfig] = Field(default_factory=list)
    solar: SourceConfig | None = None
    carbon: SourceConfig | None = None
    battery: SourceConfig | None = None
    embodied: EmbodiedConfig | None = Field(None, description="hardware for SCI's M term")
    grace_s: float = Field(0.5, ge=0, le=86_400, allow_inf_nan=False,
                           description="a tick closes after tick_s + grace_s")  # fmt: skip
    limits: SiteLimits = SiteLimits()
    # The secret of the site's internal services (ledger, actuators, API -> ledger views):
    # signs actuator messages and guards the ledger views. Read from this environment
    # variable first; ``internal_key`` (a literal) is for demos and tests only.
    internal_key_env: str = Field(
        ENV_INTERNAL_KEY, description="environment variable holding the internal key"
    )
    internal_key: str | None = Field(
        None,
        min_length=16,
        repr=False,  # never in logs or error messages
        description="literal internal key (demo/tests; prefer the env)",
    )

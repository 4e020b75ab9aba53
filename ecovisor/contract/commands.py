"""Commands (Kafka ecovisor.commands): one pydantic definition per command an app can
send, their union, its parser, the command's one name and own fields, and its
signature. See docs/contract.md#commands-ecovisorcommands."""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated, Literal, TypeVar

from pydantic import Field, TypeAdapter
from pydantic.fields import FieldInfo

# mac: the contract's one canonical-JSON HMAC rule (the actuator messages' signatures),
# keyed here by the app's token instead of the site's internal key
from ecovisor.contract.actuation import BAD_SIGNATURE, Signature, mac
from ecovisor.contract.envelope import MAX_PERIOD_S, STRICT, Amount, AppId, Ident, Message

# Version 2: the app's ``token`` (version 1, in clear on the topic, readable by any
# consumer) became a ``signature`` made with it; a version 1 command is refused.
COMMAND_SCHEMA_VERSION = 2


def new_command_id() -> str:
    return str(uuid.uuid4())


class Command(Message):
    model_config = STRICT

    schema_version: Literal[2] = COMMAND_SCHEMA_VERSION  # type: ignore[assignment]
    command_id: Ident = Field(default_factory=new_command_id)
    app: AppId
    # the token authenticates the command without travelling: anyone reading the topic
    # sees this MAC, which neither reveals the token nor fits any other command
    signature: Signature | None = Field(
        None, description="HMAC-SHA256 of the command, keyed by its app's token (sign_command)"
    )


# Every number of a command: finite, under the static ceiling (even a command published
# straight on Kafka cannot overflow the ledger); the site's limits are lower (SiteLimits).
class SetContainerPowercap(Command):
    type: Literal["set_container_powercap"] = "set_container_powercap"
    container: Ident = Field(description="container id")
    watts: Amount | None = Field(
        description="cap in W, at most the node's peak modelled power; null removes the cap"
    )


class SetBatteryChargeRate(Command):
    type: Literal["set_battery_charge_rate"] = "set_battery_charge_rate"
    watts: Amount = Field(
        description="charge at this rate until full (0 = solar-only); at most the share's limit"
    )


class SetBatteryMaxDischarge(Command):
    type: Literal["set_battery_max_discharge"] = "set_battery_max_discharge"
    watts: Amount = Field(description="max discharge rate in W; at most the share's limit")


class SetCarbonRate(Command):
    type: Literal["set_carbon_rate"] = "set_carbon_rate"
    container: Ident = Field(description="container id")
    mg_per_s: Amount | None = Field(
        description="carbon rate limit, at most site.limits.max_carbon_rate_mg_per_s; "
        "null removes it"
    )
    window_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = Field(
        60.0, description="sliding window of the rate, s"
    )


class SetCarbonBudget(Command):
    type: Literal["set_carbon_budget"] = "set_carbon_budget"
    grams: Amount | None = Field(
        description="app carbon budget per period, at most site.limits.max_carbon_budget_g; "
        "null removes it"
    )
    period_s: Annotated[float, Field(gt=0, le=MAX_PERIOD_S, allow_inf_nan=False)] = Field(
        3600.0, description="the budget resets every period, s (at most 366 days)"
    )


class SuspendContainer(Command):
    type: Literal["suspend_container"] = "suspend_container"
    container: Ident = Field(description="container id")


class ResumeContainer(Command):
    type: Literal["resume_container"] = "resume_container"
    container: Ident = Field(description="container id")


class ScaleContainer(Command):
    """Vertical scaling: change a container's CPU allowance (cores)."""

    type: Literal["scale_container"] = "scale_container"
    container: Ident = Field(description="container id")
    cpus: Annotated[float, Field(gt=0, le=1024, allow_inf_nan=False)] = Field(
        description="CPU allowance in cores, at most the node's cores"
    )


class ScaleApp(Command):
    """Horizontal scaling: run this many replicas of the app's container template."""

    type: Literal["scale_app"] = "scale_app"
    template: Ident = Field(description="container template id")
    replicas: Annotated[int, Field(ge=0, le=256)] = Field(
        description="replicas to run, at most the template's max_replicas"
    )


AnyCommand = Annotated[
    SetContainerPowercap
    | SetBatteryChargeRate
    | SetBatteryMaxDischarge
    | SetCarbonRate
    | SetCarbonBudget
    | SuspendContainer
    | ResumeContainer
    | ScaleContainer
    | ScaleApp,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(AnyCommand)
COMMAND_TYPES: dict[str, type[Command]] = {
    c.model_fields["type"].default: c
    for c in (
        SetContainerPowercap,
        SetBatteryChargeRate,
        SetBatteryMaxDischarge,
        SetCarbonRate,
        SetCarbonBudget,
        SuspendContainer,
        ResumeContainer,
        ScaleContainer,
        ScaleApp,
    )
}


def parse_command(raw: bytes | str) -> AnyCommand:
    return COMMAND_ADAPTER.validate_json(raw)


C = TypeVar("C", bound=Command)


def sign_command(cmd: C, token: str) -> C:
    """``cmd`` signed by its app: HMAC-SHA256 keyed by the app's ``token`` over the
    canonical JSON of every other field (``command_id``, ``app``, ``site``, ``time``,
    ``type`` and values included), so the signature fits this one command only. What
    every producer of ``ecovisor.commands`` sends (the API, ``ecovisor cmd``, an app
    writing to Kafka itself); the token never leaves the producer."""
    return cmd.model_copy(update={"signature": mac(cmd, token)})


def verify_command(cmd: Command, token: str) -> bool:
    """Whether ``cmd`` carries a valid signature under ``token`` (constant time)."""
    sig = cmd.signature
    return sig is not None and hmac.compare_digest(sig, mac(cmd, token))


def command_authentication_error(cmd: Command, token: str | None) -> str | None:
    """Why ``cmd`` is not authenticated as its ``app``'s (``token``: that app's token,
    None for an app the site does not have), or None when it is."""
    if cmd.signature is None:
        return f"{BAD_SIGNATURE}: the command is unsigned (sign it with the app's token)"
    if token is None:
        return f"{BAD_SIGNATURE}: no app {cmd.app!r} on this site"
    if not verify_command(cmd, token):
        return f"{BAD_SIGNATURE}: not signed with the token of app {cmd.app!r}"
    return None


# The envelope every command carries; the rest of a command's fields are its own (what
# the API body, the CLI options, the client arguments and a policy action hold).
COMMAND_ENVELOPE = frozenset(("schema_version", "site", "time", "command_id", "app", "signature"))


def command_type(cls: type[Command]) -> str:
    """A command's one name: its wire ``type`` (also the client method, the policy
    action's ``type`` and, with dashes, the CLI subcommand)."""
    return str(cls.model_fields["type"].default)


def command_fields(cls: type[Command]) -> dict[str, FieldInfo]:
    """The command's own fields (not the envelope, not ``type``), in declaration order."""
    return {
        name: f for name, f in cls.model_fields.items()
        if name not in COMMAND_ENVELOPE and name != "type"
    }

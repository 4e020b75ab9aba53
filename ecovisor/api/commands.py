"""The setters (paper Tables 1 and 2, and container management): each publishes an
``ecovisor.contract.commands`` command on ``ecovisor.commands``, signed with the app's
token (``commands.sign_command``: the token itself never goes on the bus), and
returns its ``command_id``; ``?wait=true`` waits (bounded) for the lifecycle outcome on
the app's notification topic. The ledger validates and applies; the API only checks
that the app addresses its own containers and templates, and that every value is within
the contract and the site's bounds (``EcovisorConfig.command_bound_error``, the rule the
ledger rejects with): out of bounds is a 422, nothing is published."""

import asyncio
import math
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import ValidationError

from ecovisor.api.auth import API_PREFIX as P
from ecovisor.api.auth import Me, own_container, own_template
from ecovisor.api.errors import error_responses, items, unprocessable
from ecovisor.api.metrics import command_published
from ecovisor.api.models import CommandRequest, CommandResult, command_body
from ecovisor.api.wiring import Ctx, Wiring
from ecovisor.contract import commands
from ecovisor.contract.app_config import AppConfig
from ecovisor.contract.commands import COMMAND_TYPES, Command, sign_command
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.notifications import COMMAND_LIFECYCLE, COMMAND_OUTCOMES

MAX_WAIT_S = 30.0
Wait = Annotated[bool, Query(description="wait for the lifecycle outcome")]
Timeout = Annotated[float, Query(gt=0, le=MAX_WAIT_S, description="max seconds to wait")]

# every route: the token and its app (401, 403), the command bus (503)
router = APIRouter(responses=error_responses(401, 403, 429, 503))
OWNED = error_responses(404)  # routes naming a container or template (path or body)

# Route bodies: the command's own fields minus what the path names (contract-derived).
SetContainerPowercapBody = command_body(commands.SetContainerPowercap, ("container",))
SetBatteryChargeRateBody = command_body(commands.SetBatteryChargeRate)
SetBatteryMaxDischargeBody = command_body(commands.SetBatteryMaxDischarge)
SetCarbonRateBody = command_body(commands.SetCarbonRate, ("container",))
SetCarbonBudgetBody = command_body(commands.SetCarbonBudget)
ScaleContainerBody = command_body(commands.ScaleContainer, ("container",))
ScaleAppBody = command_body(commands.ScaleApp, ("template",))


async def send(ctx: Wiring, cmd: Command, wait: bool, timeout: float) -> CommandResult:
    """Publish ``cmd``; with ``wait``, return the last lifecycle step seen within
    ``timeout`` (``timed_out`` when no outcome came)."""
    typ = str(cmd.type)  # type: ignore[attr-defined]
    wait_s = ctx.command_wait_s(cmd.app)
    if wait_s > 0:
        rate, burst = ctx.cfg.command_rate(cmd.app)
        raise HTTPException(
            429,
            f"more than {rate:g} commands a second from app {cmd.app!r} after {burst} at "
            f"once (site.limits.max_commands_per_s, command_burst): retry in {wait_s:.2f} s",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )
    result = CommandResult(command_id=cmd.command_id, type=typ, status="published")
    with ctx.bus.hub.subscribe(cmd.app) as q:  # before publishing: no outcome can be missed
        try:
            await ctx.bus.publish(cmd)
        except Exception as e:  # noqa: BLE001 - any broker error is a 503 to the app
            raise HTTPException(503, f"command bus unavailable: {e}") from e
        command_published(typ)
        if not wait:
            return result
        try:
            async with asyncio.timeout(timeout):
                while True:
                    n = await q.get()
                    if n.command_id != cmd.command_id or n.type not in COMMAND_LIFECYCLE:
                        continue
                    result = CommandResult(
                        command_id=cmd.command_id,
                        type=typ,
                        status=n.type.removeprefix("command_"),  # type: ignore[arg-type]
                        reason=n.reason,
                        data=n.data,
                    )
                    if n.type in COMMAND_OUTCOMES:
                        return result
        except TimeoutError:
            return result.model_copy(update={"timed_out": True})


async def issue(
    ctx: Wiring,
    me: AppConfig,
    kind: type[Command],
    wait: bool,
    timeout: float,
    container: str | None = None,
    **fields: Any,
) -> CommandResult:
    """Build ``kind`` for ``me`` (its site and time; a ``container`` or ``template``
    only if ``me`` owns it), sign it with ``me``'s token and ``send`` it."""
    if container is not None:
        fields["container"] = own_container(ctx.cfg, me, container)
    if "template" in fields:
        fields["template"] = own_template(ctx.cfg, me, fields["template"])
    envelope = {"site": ctx.cfg.site.id, "time": utcnow(), "app": me.id}
    try:
        cmd = kind(**envelope, **fields)
    except ValidationError as e:  # the body passed its own model; keep the 422 anyway
        raise HTTPException(422, items(e.errors(), ("body",))) from e
    bound = ctx.cfg.command_bound_error(cmd)
    if bound is not None:
        raise unprocessable(("body", bound[0]), bound[1])
    return await send(ctx, sign_command(cmd, me.token), wait, timeout)


# --- Table 1 ---------------------------------------------------------------------------
@router.put(
    P + "/containers/{container}/powercap",
    tags=["table1"],
    response_model=CommandResult,
    responses=OWNED,
)
async def set_container_powercap(
    me: Me,
    ctx: Ctx,
    container: str,
    body: SetContainerPowercapBody,  # type: ignore[valid-type]
    wait: Wait = False,
    timeout: Timeout = 5.0,
) -> CommandResult:
    """Set a container's power cap (W); ``null`` removes it."""
    return await issue(
        ctx, me, commands.SetContainerPowercap, wait, timeout, container, watts=body.watts
    )


@router.delete(
    P + "/containers/{container}/powercap",
    tags=["table1"],
    response_model=CommandResult,
    responses=OWNED,
)
async def remove_container_powercap(
    me: Me, ctx: Ctx, container: str, wait: Wait = False, timeout: Timeout = 5.0
) -> CommandResult:
    """Remove a container's power cap (same as setting null)."""
    return await issue(ctx, me, commands.SetContainerPowercap, wait, timeout, container, watts=None)


@router.put(P + "/battery/charge_rate", tags=["table1"], response_model=CommandResult)
async def set_battery_charge_rate(
    me: Me, ctx: Ctx, body: SetBatteryChargeRateBody,  # type: ignore[valid-type]
    wait: Wait = False, timeout: Timeout = 5.0,
) -> CommandResult:
    """Charge the virtual battery at this rate (W) until full; 0 = solar only."""
    return await issue(ctx, me, commands.SetBatteryChargeRate, wait, timeout, watts=body.watts)


@router.put(P + "/battery/max_discharge", tags=["table1"], response_model=CommandResult)
async def set_battery_max_discharge(
    me: Me, ctx: Ctx, body: SetBatteryMaxDischargeBody,  # type: ignore[valid-type]
    wait: Wait = False, timeout: Timeout = 5.0,
) -> CommandResult:
    """Maximum virtual battery discharge rate (W)."""
    return await issue(ctx, me, commands.SetBatteryMaxDischarge, wait, timeout, watts=body.watts)


# --- Table 2 ---------------------------------------------------------------------------
@router.put(
    P + "/containers/{container}/carbon_rate",
    tags=["table2"],
    response_model=CommandResult,
    responses=OWNED,
)
async def set_carbon_rate(
    me: Me,
    ctx: Ctx,
    container: str,
    body: SetCarbonRateBody,  # type: ignore[valid-type]
    wait: Wait = False,
    timeout: Timeout = 5.0,
) -> CommandResult:
    """A container's carbon rate (mg/s over window_s); the ecovisor tracks and notifies."""
    rate = {"mg_per_s": body.mg_per_s, "window_s": body.window_s}
    return await issue(ctx, me, commands.SetCarbonRate, wait, timeout, container, **rate)


@router.put(P + "/carbon_budget", tags=["table2"], response_model=CommandResult)
async def set_carbon_budget(
    me: Me, ctx: Ctx, body: SetCarbonBudgetBody,  # type: ignore[valid-type]
    wait: Wait = False, timeout: Timeout = 5.0,
) -> CommandResult:
    """The app's carbon budget (g per period_s); the ecovisor tracks and notifies."""
    return await issue(
        ctx, me, commands.SetCarbonBudget, wait, timeout, grams=body.grams, period_s=body.period_s
    )


# --- container management ----------------------------------------------------------------
@router.post(
    P + "/containers/{container}/suspend",
    tags=["containers"],
    response_model=CommandResult,
    responses=OWNED,
)
async def suspend_container(
    me: Me, ctx: Ctx, container: str, wait: Wait = False, timeout: Timeout = 5.0
) -> CommandResult:
    """Suspend (freeze) a container."""
    return await issue(ctx, me, commands.SuspendContainer, wait, timeout, container)


@router.post(
    P + "/containers/{container}/resume",
    tags=["containers"],
    response_model=CommandResult,
    responses=OWNED,
)
async def resume_container(
    me: Me, ctx: Ctx, container: str, wait: Wait = False, timeout: Timeout = 5.0
) -> CommandResult:
    """Resume a suspended container."""
    return await issue(ctx, me, commands.ResumeContainer, wait, timeout, container)


@router.put(
    P + "/containers/{container}/cpus",
    tags=["containers"],
    response_model=CommandResult,
    responses=OWNED,
)
async def scale_container(
    me: Me, ctx: Ctx, container: str, body: ScaleContainerBody,  # type: ignore[valid-type]
    wait: Wait = False, timeout: Timeout = 5.0,
) -> CommandResult:
    """Vertical scaling: the container's CPU allowance in cores."""
    return await issue(ctx, me, commands.ScaleContainer, wait, timeout, container, cpus=body.cpus)


@router.put(
    P + "/templates/{template}/replicas",
    tags=["containers"],
    response_model=CommandResult,
    responses=OWNED,
)
async def scale_app(
    me: Me, ctx: Ctx, template: str, body: ScaleAppBody,  # type: ignore[valid-type]
    wait: Wait = False, timeout: Timeout = 5.0,
) -> CommandResult:
    """Horizontal scaling: run this many replicas of a container template."""
    return await issue(
        ctx, me, commands.ScaleApp, wait, timeout, template=template, replicas=body.replicas
    )


# --- any command, by its one name -------------------------------------------------------
@router.post(
    P + "/commands",
    tags=["commands"],
    response_model=CommandResult,
    responses=OWNED,
)
async def command(
    me: Me, ctx: Ctx, body: CommandRequest, wait: Wait = False, timeout: Timeout = 5.0
) -> CommandResult:
    """Any command of the contract (docs/contract.md), named by its ``type`` with its own
    fields: the routes above are this for the paper's functions. The client library
    sends every command here."""
    fields = body.model_dump(exclude={"type"})  # type: ignore[attr-defined]
    container = fields.pop("container", None)
    kind = COMMAND_TYPES[body.type]  # type: ignore[attr-defined]
    return await issue(ctx, me, kind, wait, timeout, container, **fields)

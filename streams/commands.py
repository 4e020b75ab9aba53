"""Command validation for the ledger: PURE (no I/O, no clocks, no globals).

A command from ``ecovisor.commands`` is accepted only if, in this order:

1. it parses against the contract (``ecovisor.contract.commands.AnyCommand``): strict JSON types,
   finite numbers under the contract's static ceiling;
2. it is authenticated as its ``app``'s: that app is configured and the command's
   ``signature`` is the HMAC of this very command under the app's token
   (``commands.command_authentication_error``; the token itself never travels);
3. it is for this site;
4. the container (or template) it names is owned by that app;
5. its values are within the site's bounds (``EcovisorConfig.command_bound_error``, the
   rule the API answers 422 with): carbon limits within ``site.limits``, a power cap
   within its node's peak power, cpus within the node's cores, replicas within the
   template's max; and battery rates within the app's share (``share_bound_error``);
6. its values are in range: a power cap must be at least the container's enforceable
   floor under the node's power model (idle share, kernel minimum quota:
   ``EcovisorConfig.cap_quota``), carbon limits > 0 (``null`` removes).

Only an authenticated command is answered to its app (``command_rejected`` with the
reason); one that does not parse or is not authenticated tells no app anything (the
sender chooses the ``app`` and ``command_id`` it claims): it is dead-lettered.

An accepted cap's ``ContainerAction`` carries the CPU quota computed here (``quota_us``
per ``period_us``): the actuator writes it, so what was validated is what is enforced.

The result is a ``Decision``: accepted or rejected with a one-line reason, the core
``SettingsChange`` to queue (applies from the next tick) and the ``ContainerAction``s to
send to the actuators. Settings and actions carry the command's own event time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ecovisor.contract.actuation import ContainerAction, ContainerActionName
from ecovisor.contract.commands import (
    AnyCommand,
    ResumeContainer,
    ScaleApp,
    ScaleContainer,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
    SuspendContainer,
    command_authentication_error,
    parse_command,
)
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.operator_messages import describe_validation_error
from ecovisor.core import state as core
from ecovisor.core.power_cap import CapRejected, CpuQuota


@dataclass(frozen=True)
class Decision:
    accepted: bool
    command_id: str | None
    # the app the command is authenticated as (its notification target); None when it
    # is not authenticated (whatever app it claims)
    app: str | None
    type: str | None
    reason: str | None = None
    change: Any = None  # ecovisor.tick SettingsChange, applied from the next tick
    actions: tuple[ContainerAction, ...] = ()
    command: AnyCommand | None = None
    # apps to notify of the outcome: the authenticated app, or none (dead-lettered)
    notify: tuple[str, ...] = field(default=())
    detail: dict[str, Any] = field(default_factory=dict)


def _decided(cmd: AnyCommand, accepted: bool, notify: tuple[str, ...], **kw: Any) -> Decision:
    return Decision(
        accepted=accepted,
        command_id=cmd.command_id,
        app=cmd.app,
        type=cmd.type,
        command=cmd,
        notify=notify,
        **kw,
    )


def _reject(cmd: AnyCommand, reason: str) -> Decision:
    """An authenticated command refused: its app is told why."""
    return _decided(cmd, False, (cmd.app,), reason=reason)


def _unauthenticated(cmd: AnyCommand, reason: str) -> Decision:
    """Not authenticated as its claimed app: nobody is told (dead-lettered), or anyone
    could write rejections, with ids of their choice, into another app's stream."""
    return Decision(
        accepted=False, command_id=cmd.command_id, app=None, type=cmd.type, reason=reason
    )


def reject_unparsable(err: Exception) -> Decision:
    """A payload that does not parse: rejected, only dead-lettered (unparsed, it cannot
    be authenticated as any app's)."""
    reason = (
        describe_validation_error(err) if isinstance(err, ValidationError) else str(err)
    ) or "not a valid command"
    return Decision(False, None, None, None, reason=f"invalid command: {reason}")


def _cap_quota(cfg: EcovisorConfig, container: str, watts: float) -> CpuQuota | str:
    """The CPU quota that enforces the cap (``EcovisorConfig.cap_quota``, the one cap ->
    quota rule; the actuator writes this quota), or why the cap is rejected."""
    try:
        return cfg.cap_quota(container, watts)
    except CapRejected as e:
        return f"power cap {watts} W rejected ({e.reason}): {e.message}"


def validate(cfg: EcovisorConfig, cmd: AnyCommand) -> Decision:
    """Validate one parsed command against the configuration."""
    app = next((a for a in cfg.apps if a.id == cmd.app), None)
    why = command_authentication_error(cmd, app.token if app else None)
    if why is not None or app is None:  # (an unknown app always has a reason)
        return _unauthenticated(cmd, why or f"no app {cmd.app!r}")
    if cmd.site != cfg.site.id:
        return _reject(cmd, f"command for site {cmd.site!r}, this is {cfg.site.id!r}")
    container = getattr(cmd, "container", None)
    place = cfg.locate(container) if container is not None else None
    if container is not None and (place is None or place.app != app.id):
        return _reject(cmd, f"app {app.id!r} does not own container {container!r}")
    if isinstance(cmd, ScaleApp) and not any(t.id == cmd.template for t in app.templates):
        return _reject(cmd, f"app {app.id!r} has no container template {cmd.template!r}")
    bound = cfg.command_bound_error(cmd) or cfg.share_bound_error(cmd)
    if bound is not None:
        return _reject(cmd, f"{bound[0]}: {bound[1]}")

    def ok(change: Any = None, *actions: ContainerAction, **detail: Any) -> Decision:
        return _decided(cmd, True, (cmd.app,), change=change, actions=actions, detail=detail)

    def action(kind: ContainerActionName, container_id: str, **kw: Any) -> ContainerAction:
        # kind: the type of the command that caused it (one name, ledger to actuator)
        return ContainerAction(
            site=cmd.site,
            time=cmd.time,
            command_id=cmd.command_id,
            app=cmd.app,
            container=container_id,
            action=kind,
            **kw,
        )

    if isinstance(cmd, SetContainerPowercap):
        if cmd.watts is None:
            return ok(
                core.SetContainerPowercap(container=cmd.container, watts=None),
                action("set_container_powercap", cmd.container, watts=None),  # null: removes
            )
        quota = _cap_quota(cfg, cmd.container, cmd.watts)
        if isinstance(quota, str):
            return _reject(cmd, quota)
        return ok(
            core.SetContainerPowercap(container=cmd.container, watts=cmd.watts),
            action(
                "set_container_powercap",
                cmd.container,
                watts=cmd.watts,
                quota_us=quota.quota_us,
                period_us=quota.period_us,
            ),
        )
    if isinstance(cmd, SetBatteryChargeRate):  # within the share: share_bound_error
        return ok(core.SetBatteryChargeRate(watts=cmd.watts))
    if isinstance(cmd, SetBatteryMaxDischarge):
        return ok(core.SetBatteryMaxDischarge(watts=cmd.watts))
    if isinstance(cmd, SetCarbonRate):
        if cmd.mg_per_s is None:
            return ok(core.SetCarbonRate(container=cmd.container, limit=None))
        if cmd.mg_per_s <= 0:
            return _reject(cmd, "carbon rate must be > 0 mg/s (null removes the limit)")
        limit_rate = core.CarbonRateLimit(rate_mg_per_s=cmd.mg_per_s, window_s=cmd.window_s)
        return ok(core.SetCarbonRate(container=cmd.container, limit=limit_rate))
    if isinstance(cmd, SetCarbonBudget):
        if cmd.grams is None:
            return ok(core.SetCarbonBudget(budget=None))
        if cmd.grams <= 0:
            return _reject(cmd, "carbon budget must be > 0 g (null removes the budget)")
        budget = core.CarbonBudget(budget_g=cmd.grams, period_s=cmd.period_s)
        return ok(core.SetCarbonBudget(budget=budget))
    if isinstance(cmd, SuspendContainer):
        return ok(None, action("suspend_container", cmd.container))
    if isinstance(cmd, ResumeContainer):
        return ok(None, action("resume_container", cmd.container))
    if isinstance(cmd, ScaleContainer):  # cpus within the node's cores: command_bound_error
        return ok(None, action("scale_container", cmd.container, cpus=cmd.cpus))
    if isinstance(cmd, ScaleApp):  # the app's template, replicas within its max: above
        return ok(None, action("scale_app", cmd.template, replicas=cmd.replicas))
    return _reject(cmd, f"unsupported command type {cmd.type!r}")  # pragma: no cover


def decide(cfg: EcovisorConfig, raw: bytes | str) -> Decision:
    """Parse and validate one raw command payload; one larger than
    ``site.limits.max_message_bytes`` is refused unread (dead-lettered)."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    limit = cfg.site.limits.max_message_bytes
    if size > limit:
        reason = f"payload of {size} bytes is larger than site.limits.max_message_bytes ({limit})"
        return Decision(False, None, None, None, reason=f"invalid command: {reason}")
    try:
        cmd = parse_command(raw)
    except (ValidationError, ValueError) as e:
        return reject_unparsable(e)
    return validate(cfg, cmd)

"""The actuators' pure bookkeeping: the setpoints in force per container, the limit to
restore when a cap is lifted, replica counts per template, and which command_ids were
already handled. No I/O: the services fold actions in (live, or replayed from Kafka after
a restart) and then apply the resulting state through a backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ecovisor.contract.actuation import ContainerAction
from ecovisor.core.power_cap import DEFAULT_PERIOD_US
from ecovisor.core.recent_ids import RecentIds

UNKNOWN: Literal["unknown"] = "unknown"
Effect = Literal["limit", "freezer", "replicas", "none"]


@dataclass
class ContainerSetpoints:
    """What Ecovisor wants for one container."""

    # The limit the container had before Ecovisor first touched it (None = unlimited);
    # UNKNOWN until read from the backend (or recovered from an earlier acknowledgement).
    baseline: float | None | Literal["unknown"] = UNKNOWN
    baseline_raw: Any = None  # the backend's own form of the baseline (restored verbatim)
    vertical_cores: float | None = None  # scale_container: the allowance in force
    cap_w: float | None = None
    cap_cores: float | None = None
    suspended: bool = False

    def base_limit(self) -> float | None:
        """The limit in force without a power cap: vertical allowance, else baseline."""
        if self.vertical_cores is not None:
            return self.vertical_cores
        return None if self.baseline == UNKNOWN else self.baseline  # type: ignore[return-value]

    def effective_limit(self) -> float | None:
        """The CPU limit to write: the lower of the base limit and the cap."""
        base = self.base_limit()
        if self.cap_cores is None:
            return base
        return self.cap_cores if base is None else min(base, self.cap_cores)


@dataclass
class ActuatorState:
    """Setpoints of every container and template this actuator has seen."""

    containers: dict[str, ContainerSetpoints] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    # the action keys handled: the last 100,000 (the product's one bounded de-dup rule)
    seen: RecentIds = field(default_factory=RecentIds)

    def setpoints(self, container: str) -> ContainerSetpoints:
        return self.containers.setdefault(container, ContainerSetpoints())

    def fold(self, action: ContainerAction, cap_to_cores: Callable[[str, float], float]) -> Effect:
        """Record an action's setpoint; return what has to be (re)applied.

        A cap's CPU limit is the quota the ledger computed and carried in the action.
        ``cap_to_cores(container, watts)`` (the same rule, ``EcovisorConfig.cap_quota``)
        is only for actions without one (older ledgers); it may raise ValueError (e.g. a
        cap below the container's idle floor), which leaves the state unchanged.
        """
        if action.action == "scale_app":
            self.replicas[action.container] = int(action.replicas or 0)
            return "replicas"
        sp = self.setpoints(action.container)
        if action.action == "set_container_powercap":
            if action.watts is None:  # a null cap removes it
                sp.cap_w, sp.cap_cores = None, None
            elif action.quota_us is not None:
                period = action.period_us or DEFAULT_PERIOD_US
                sp.cap_w, sp.cap_cores = action.watts, action.quota_us / period
            else:
                cores = cap_to_cores(action.container, action.watts)
                sp.cap_w, sp.cap_cores = action.watts, cores
            return "limit"
        if action.action == "scale_container":
            sp.vertical_cores = action.cpus
            return "limit"
        if action.action == "suspend_container":
            sp.suspended = True
            return "freezer"
        if action.action == "resume_container":
            sp.suspended = False
            return "freezer"
        return "none"  # pragma: no cover - the schema forbids other actions


def action_key(app: str | None, command_id: str) -> str:
    """Idempotency key of an action: command ids are chosen by apps, so they are unique
    per app only (one app reusing another's id must not get that app's action dropped)."""
    return f"{app}|{command_id}"


def latest_actions(actions: Iterable[ContainerAction]) -> list[ContainerAction]:
    """Actions in order with duplicates (same app and command_id) dropped: the replay
    input."""
    seen: set[str] = set()
    out = []
    for a in actions:
        key = action_key(a.app, a.command_id)
        if key in seen:
            continue
        seen.add(key)
        out.append(a)
    return out

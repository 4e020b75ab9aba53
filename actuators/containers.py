"""Container actuator service: ``python -m actuators.containers --config FILE``.

Consumes ``ContainerAction`` from Kafka ``ecovisor.actuator.containers`` (routed there by
the ledger), applies it through the container's backend (cgroup v1/v2, LXD, process
group) and publishes an ``ActuatorAck`` to ``ecovisor.actuator.acks``. An action is
named by the command that caused it:

* ``set_container_powercap``  writes the CPU quota the ledger computed for the cap
  (carried in the action; computed by the same ``EcovisorConfig.cap_quota`` if absent);
  with ``watts`` null it removes the cap: restores the limit in force before it
  (vertical allowance, else the container's own limit from before Ecovisor touched it);
* ``scale_container``  vertical scaling: the CPU allowance in cores (a cap still applies
  on top);
* ``suspend_container`` / ``resume_container``  freezer;
* ``scale_app``  horizontal scaling from a template; each replica started or removed is
  announced as a ``ContainerEvent`` on ``ecovisor.containers``.

Actions that earlier ledgers wrote under older names still parse (replayed on start):
``ContainerAction`` maps them to these.

Idempotent by command_id. On start it re-reads its acknowledgements and the actuator
topic from the beginning and re-applies the latest setpoints per container. A missing
cgroup, a refused write, an unreachable LXD, an action on a container of another app, or
any other failure of one action is an ``ok=False`` acknowledgement, never a crash. See
docs/actuators.md.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from actuators.baselines import BaselineStore
from actuators.kafka_io import (
    Publish,
    Service,
    Signer,
    parser,
    run_actuator,
    serve,
    service_args,
)
from actuators.state import UNKNOWN, ActuatorState, Effect, action_key, latest_actions
from ecovisor.adapters.backends import BackendError, ContainerBackend, make_backend
from ecovisor.adapters.cgroups import ProcessBackend
from ecovisor.adapters.lxd import LxdBackend
from ecovisor.contract import topics
from ecovisor.contract.actuation import ActuatorAck, ContainerAction, ContainerEvent
from ecovisor.contract.app_config import ContainerBackend as BackendConfig
from ecovisor.contract.config import EcovisorConfig, Placement
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.environment import internal_key

ACTUATOR = "containers"
log = logging.getLogger("actuators.containers")


class ContainerActuator:
    """The service's logic with its I/O injected: backends come from ``backend_factory``,
    messages leave through ``publish``. Not thread-safe (one consumer loop drives it)."""

    def __init__(
        self,
        cfg: EcovisorConfig,
        publish: Publish,
        backend_factory: Callable[[BackendConfig], ContainerBackend] = make_backend,
        clock: Callable[[], datetime] = utcnow,
        log_dir: Path | None = None,
        baseline_file: Path | None = None,
    ) -> None:
        self.cfg = cfg
        # each container's limit before its first cap, on disk before the cap is written
        self.baselines = BaselineStore(baseline_file)
        self.site = cfg.site.id
        self.publish = publish
        self.backend_factory = backend_factory
        self.clock = clock
        self.log_dir = log_dir
        self.state = ActuatorState()
        self._backends: dict[str, ContainerBackend] = {}
        self.signer = Signer(internal_key(cfg), ACTUATOR, log)

    # --- lookups -------------------------------------------------------------------------
    def placement(self, container: str) -> Placement:
        where = self.cfg.locate(container)
        if where is None:
            raise KeyError(f"container {container!r} is not in the site configuration")
        return where

    def backend(self, container: str) -> ContainerBackend:
        b = self._backends.get(container)
        if b is None:
            b = self.backend_factory(self.placement(container).backend)
            self._backends[container] = b
        return b

    def running_replicas(self) -> list[str]:
        """Replica ids up to each template's wanted count (templates by their config)."""
        want = self.state.replicas
        return [
            c
            for c, p in self.cfg.placements().items()
            if p.template is not None and (p.replica or 0) <= want.get(p.template, 0)
        ]

    def ownership_error(self, action: ContainerAction) -> str | None:
        """Why ``action.app`` may not act on the action's container, or None. The ledger
        checks ownership before it routes a command; this is defence in depth, by the
        same rule (``EcovisorConfig.placements``; for ``scale_app``, the template's
        app)."""
        try:
            if action.action == "scale_app":
                owner = self.cfg.template(action.container)[0].id
            else:
                owner = self.placement(action.container).app
        except KeyError as e:
            return _reason(e)
        if owner != action.app:
            return f"container {action.container!r} does not belong to app {action.app!r}"
        return None

    def cap_to_cores(self, container: str, watts: float) -> float:
        """A cap's CPU limit for an action that does not carry the ledger's quota."""
        q = self.cfg.cap_quota(container, watts)
        assert q.cores is not None
        return q.cores

    # --- handling ------------------------------------------------------------------------
    def handle(self, action: ContainerAction) -> ActuatorAck | None:
        """Apply one action; the acknowledgement (also published), or None when the
        action is for another site or a duplicate command_id."""
        key = action_key(action.app, action.command_id)
        if action.site != self.site:
            return None
        if not self.signer.accepts(action):
            # checked before the dedupe: a forged copy must not shadow the real command
            log.warning("refusing unsigned/forged action %s on %s", action.command_id,
                        action.container)  # fmt: skip
            self.signer.refuse(self.publish, self.site, topics.ACTUATOR_CONTAINERS, action)
            return None
        if key in self.state.seen:
            return None
        self.state.seen.add(key)
        # checked before the fold: a refused action must not leave a setpoint behind
        error = self.ownership_error(action)
        if error is not None:
            log.warning("refusing command %s of %s: %s", action.command_id, action.app, error)
            return self._ack(action, ok=False, error=error)
        effect, error = self._fold(action)
        if error is not None:
            return self._ack(action, ok=False, error=error)
        applied, error = self._apply(action.container, effect, action.command_id)
        if error is not None:
            return self._ack(action, ok=False, error=error)
        return self._ack(action, ok=True, applied=applied)

    def _fold(self, action: ContainerAction) -> tuple[Effect, str | None]:
        """Fold one action into the state: (effect, None), or ("none", the reason)."""
        try:
            return self.state.fold(action, self.cap_to_cores), None
        except (KeyError, ValueError) as e:  # unknown container, cap below idle floor
            return "none", _reason(e)
        except Exception as e:  # a bug must fail this action only, not the actuator
            log.exception("command %s on %s: unexpected error", action.command_id,
                          action.container)  # fmt: skip
            return "none", _unexpected(e)

    def _apply(
        self, container: str, effect: Effect, command_id: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """Apply a container's state: (applied, None), or ({}, the reason). Any error of
        one action is its failure: escaping, it would stop the service before the ack,
        and the restart would replay the same action and stop again."""
        try:
            return self.apply(container, effect, command_id), None
        except (BackendError, KeyError) as e:
            log.warning("command %s on %s (%s) failed: %s", command_id, container, effect, e)
            return {}, _reason(e)
        except Exception as e:
            log.exception("command %s on %s (%s): unexpected error", command_id, container,
                          effect)  # fmt: skip
            return {}, _unexpected(e)

    def apply(self, container: str, effect: Effect, command_id: str | None = None) -> dict:
        if effect == "limit":
            return self._apply_limit(container)
        if effect == "freezer":
            return self._apply_freezer(container)
        if effect == "replicas":
            return self._apply_replicas(container, command_id)
        return {}

    def _apply_limit(self, container: str) -> dict[str, Any]:
        b = self.backend(container)
        sp = self.state.setpoints(container)
        if sp.baseline == UNKNOWN:
            kept = self.baselines.get(container)
            if kept is not None:  # recorded before a crash that lost its acknowledgement
                sp.baseline, sp.baseline_raw = kept
            else:
                raw, cpus = b.snapshot_limit(), b.get_cpu_limit()
                # on disk first: if it cannot be, neither baseline nor cap is taken
                self.baselines.put(container, cpus, raw)
                sp.baseline, sp.baseline_raw = cpus, raw
        if sp.cap_cores is None and sp.vertical_cores is None:
            written = b.restore_limit(sp.baseline_raw)
        else:
            written = b.set_cpu_limit(sp.effective_limit())
        return {
            "cpu_limit_cores": written,
            "cap_w": sp.cap_w,
            "cap_cores": sp.cap_cores,
            "vertical_cpus": sp.vertical_cores,
            "baseline_cpus": sp.baseline,
            "baseline": sp.baseline_raw,
            "backend": b.describe(),
        }

    def _apply_freezer(self, container: str) -> dict[str, Any]:
        b = self.backend(container)
        sp = self.state.setpoints(container)
        if sp.suspended:
            b.freeze()
        else:
            b.thaw()
        return {"suspended": sp.suspended, "backend": b.describe()}

    def _apply_replicas(self, template: str, command_id: str | None) -> dict[str, Any]:
        app, tpl = self.cfg.template(template)
        want = self.state.replicas.get(template, 0)
        if want > tpl.max_replicas:
            raise BackendError(f"{want} replicas of {template!r} exceed max_replicas")
        if tpl.backend.type not in ("process", "lxd"):
            raise BackendError(
                f"template {template!r}: horizontal scaling needs a process or lxd backend"
            )
        if tpl.backend.type == "process" and not tpl.command:
            raise BackendError(f"template {template!r} has no command to start")
        added: list[str] = []
        removed: list[str] = []

        def announce(i: int, event: Literal["added", "removed"]) -> None:
            # at once, replica by replica: if a later replica fails, the ones already
            # started (or stopped) are running (or gone) and must be known as such; a
            # later scale_app sees them up and would never announce them
            ev = ContainerEvent(
                site=self.site,
                time=self.clock(),
                app=app.id,
                container=tpl.replica_id(i),
                event=event,
                template=template,
                node=tpl.node,
                backend=tpl.replica_backend(i).model_dump(exclude_none=True),
                command_id=command_id,
            )
            self.publish(topics.CONTAINERS, self.site, ev.to_json())
            (added if event == "added" else removed).append(tpl.replica_id(i))

        for i in range(1, max(tpl.max_replicas, want) + 1):
            cid = tpl.replica_id(i)
            try:
                b = self.backend(cid)
                if i <= want and not _replica_up(b):
                    self._start_replica(
                        b, tpl.command or [], tpl.backend.instance, self.cfg.workload_uid(app.id)
                    )
                    announce(i, "added")
                    # a replica restarted after a restore gets the setpoints it had
                    if cid in self.state.containers:
                        sp = self.state.containers[cid]
                        if sp.cap_cores is not None or sp.vertical_cores is not None:
                            self._apply_limit(cid)
                elif i > want and _replica_present(b):
                    _stop_replica(b)
                    announce(i, "removed")
                    self.state.containers.pop(cid, None)
            except BackendError as e:
                done = [f"added {', '.join(added)}"] if added else []
                done += [f"removed {', '.join(removed)}"] if removed else []
                so_far = f" ({'; '.join(done)})" if done else ""
                raise BackendError(f"replica {cid}: {e}{so_far}") from None
        return {"replicas": want, "added": added, "removed": removed}

    def _start_replica(
        self, b: ContainerBackend, command: list[str], source: str | None, uid: int
    ) -> None:
        if isinstance(b, ProcessBackend):
            logf = self.log_dir / f"{b.path.replace('/', '_')}.log" if self.log_dir else None
            b.spawn(command, logf, uid=uid)  # the template's app's uid, never root
        elif isinstance(b, LxdBackend):
            assert source is not None
            b.start_copy(source)

    def _ack(
        self,
        action: ContainerAction,
        ok: bool,
        applied: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> ActuatorAck:
        ack = ActuatorAck(
            site=self.site,
            time=self.clock(),  # after the backend write: the time the value took effect
            command_id=action.command_id,
            app=action.app,
            actuator=ACTUATOR,
            ok=ok,
            applied={"action": action.action, "container": action.container, **(applied or {})},
            error=error,
        )
        ack = self.signer.ack(ack)
        self.publish(topics.ACTUATOR_ACKS, self.site, ack.to_json())
        return ack

    # --- restart -------------------------------------------------------------------------
    def restore(self, actions: Iterable[ContainerAction], acks: Iterable[ActuatorAck]) -> int:
        """Rebuild the setpoints from the actuator topic's history and re-apply the
        latest per container. Baselines come from earlier acknowledgements (so a cap left
        in place by the previous run is not mistaken for the original limit). Commands
        without an acknowledgement are acknowledged now. Returns how many were replayed."""
        acked: set[str] = set()
        for ack in acks:
            if ack.actuator != ACTUATOR or ack.site != self.site:
                continue
            acked.add(action_key(ack.app, ack.command_id))
            c = ack.applied.get("container")
            if ack.ok and c and "baseline_cpus" in ack.applied:
                sp = self.state.setpoints(c)
                if sp.baseline == UNKNOWN:
                    sp.baseline = ack.applied["baseline_cpus"]
                    sp.baseline_raw = ack.applied.get("baseline")
        mine_all = [a for a in actions if a.site == self.site]
        # history without a valid signature (forged, or written before the key): refused
        trusted = [a for a in mine_all if self.signer.accepts(a)]
        if len(trusted) < len(mine_all):
            log.warning("ignoring %d unsigned/forged action(s) in the topic's history",
                        len(mine_all) - len(trusted))  # fmt: skip
        mine = latest_actions(trusted)
        try:
            self.baselines.keep_only({a.container for a in trusted})
        except BackendError as e:  # stale entries stay on disk; memory is right
            log.warning("forgetting stale baselines: %s", e)
        pending: list[ContainerAction] = []
        touched: dict[str, set[Effect]] = {}
        for a in mine:
            key = action_key(a.app, a.command_id)
            self.state.seen.add(key)
            error = self.ownership_error(a)
            if error is None:
                effect, error = self._fold(a)
            if error is not None:
                if key not in acked:
                    self._ack(a, ok=False, error=error)
                continue
            touched.setdefault(a.container, set()).add(effect)
            if key not in acked:
                pending.append(a)
        # per container and effect: one failing (whatever the error) fails its actions
        # only, the others are still restored
        results: dict[tuple[str, Effect], tuple[dict[str, Any], str | None]] = {}
        # replicas first, so caps on replicas find their containers
        order = sorted(touched.items(), key=lambda kv: "replicas" not in kv[1])
        for container, effects in order:
            for effect in sorted(effects, key=lambda e: e != "replicas"):
                results[(container, effect)] = self._apply(container, effect, None)
        for a in pending:
            applied, err = results.get((a.container, _effect_of(a)), ({}, "not applied"))
            self._ack(a, ok=err is None, applied=applied, error=err)
        return len(mine)

    def shutdown(self) -> None:
        """Stop process replicas this service started (they are restored on restart)."""
        for cid in self.running_replicas():
            b = self._backends.get(cid)
            if isinstance(b, ProcessBackend):
                try:
                    b.stop()
                except BackendError as e:
                    log.warning("stopping replica %s: %s", cid, e)
                except Exception:  # the other replicas are still stopped
                    log.exception("stopping replica %s", cid)


def _replica_up(b: ContainerBackend) -> bool:
    """Running: its processes (process) or its started instance (LXD: a copy that
    exists but is stopped is not up, and gets started)."""
    if isinstance(b, ProcessBackend | LxdBackend):
        return b.running()
    return b.exists()


def _replica_present(b: ContainerBackend) -> bool:
    """Anything to remove when scaling down (LXD: a stopped copy too)."""
    if isinstance(b, LxdBackend):
        return b.status() is not None
    return _replica_up(b)


def _stop_replica(b: ContainerBackend) -> None:
    if isinstance(b, ProcessBackend):
        b.stop()
    elif isinstance(b, LxdBackend):
        b.destroy()


def _effect_of(a: ContainerAction) -> Effect:
    """The part of the container's state the action changes."""
    effects: dict[str, Effect] = {
        "set_container_powercap": "limit",
        "scale_container": "limit",
        "suspend_container": "freezer",
        "resume_container": "freezer",
        "scale_app": "replicas",
    }
    return effects[a.action]


def _reason(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text or type(e).__name__


def _unexpected(e: BaseException) -> str:
    """The reason of an error no backend anticipated (the traceback is in the log)."""
    return f"unexpected {type(e).__name__}: {e}" if str(e) else f"unexpected {type(e).__name__}"


parse_action = parser(ContainerAction, log)


# --- process entry point ---------------------------------------------------------------


def baseline_file(cfg: EcovisorConfig) -> Path:
    """Where the actuator keeps its baselines: in the stack's state dir (relative to the
    working directory, as the stack runs every service)."""
    return Path(cfg.stack.state_dir) / "actuator-containers" / "baselines.json"


def run(
    cfg: EcovisorConfig, stop: threading.Event, fetch_wait_ms: int, log_dir: Path | None
) -> None:
    def start(publish: Publish, acks: list[ActuatorAck]) -> Service[ContainerAction]:
        act = ContainerActuator(cfg, publish, log_dir=log_dir, baseline_file=baseline_file(cfg))
        return Service(lambda history: act.restore(history, acks), act.handle, act.shutdown)

    run_actuator(
        cfg, stop, ACTUATOR, topics.ACTUATOR_CONTAINERS, fetch_wait_ms, parse_action, start
    )


def main(argv: list[str] | None = None) -> int:
    p = service_args("actuators.containers", __doc__)
    p.add_argument("--log-dir", help="where replica output goes (default: discarded)")
    args = p.parse_args(argv)
    log_dir = Path(args.log_dir) if args.log_dir else None
    return serve(
        "actuators.containers",
        args.config,
        lambda cfg, stop: run(cfg, stop, args.fetch_wait_ms, log_dir),
    )


if __name__ == "__main__":
    sys.exit(main())

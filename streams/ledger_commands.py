"""The ledger worker's command side, without I/O: a command into its decision
(streams/commands.py), idempotency per app, queued settings changes and signed actuator
actions, lifecycle notifications; an actuator's ack into ``command_applied`` /
``command_failed``. ``SiteLedger`` (streams/ledger_worker.py) holds the state these
methods use; docs/ledger.md "Commands"."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ecovisor.contract import topics
from ecovisor.contract.actuation import BAD_SIGNATURE, ActuatorAck, sign, verify
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.notifications import Notification
from ecovisor.contract.operator_messages import dead_letter, describe_validation_error
from ecovisor.core.settings import queue_site_change
from ecovisor.core.state import MAX_PENDING, SiteState
from ecovisor.core.tick_clock import TickClock, to_us
from streams.commands import Decision, decide
from streams.ledger_out import Out, utc_from_us

# Idempotency: the last command keys remembered per app (and for payloads not
# authenticated as any app's), so the snapshot stays small whatever the traffic
# (docs/reliability.md).
SEEN_COMMANDS_PER_APP = 256
SEEN_BYTES_PER_APP = 16_384
PENDING_ACKS_PER_APP = 256
RAW_BUCKET = ""  # seen_commands bucket of payloads not authenticated as any app's


def bucketed_keys(keys: Iterable[str]) -> dict[str, list[str]]:
    """v1 idempotency keys ("owner|app|id" or "raw|sha") into v2 buckets, oldest first."""
    out: dict[str, list[str]] = {}
    for key in keys:
        head, _, rest = key.partition("|")
        out.setdefault(RAW_BUCKET if head == "raw" else head, []).append(rest)
    return out


class CommandIntake:
    """Commands and actuator acks of one site (a base of ``SiteLedger``, which holds the
    state named below)."""

    cfg: EcovisorConfig
    clock: TickClock
    state: SiteState
    key: str | None
    app_cfg: dict[str, Any]
    seen_commands: dict[str, OrderedDict[str, None]]
    pending_acks: dict[str, str]
    pending_settings: dict[str, dict[str, Any]]
    suspended: dict[str, list[str]]
    # commands accepted by this object: its service persists after one (an accepted
    # command's settings must survive a crash), not after a rejected or junk one
    accepted_commands: int = 0

    def command(self, raw: bytes, now_us: int) -> list[Out]:
        """Validate one command; lifecycle notifications, queued settings, actions."""
        raw = raw if raw is not None else b""  # a Kafka tombstone: dead-lettered below
        d = decide(self.cfg, raw)
        outs: list[Out] = []
        bucket, key = self._dedupe_key(d, raw)
        seen = self.seen_commands.setdefault(bucket, OrderedDict())
        if key in seen:
            return outs  # re-delivered command: no-op
        seen[key] = None
        self._trim_seen(bucket)
        app_state = self.state.apps.get(d.app or "")
        if (
            d.accepted
            and d.change is not None
            and app_state is not None
            and len(app_state.pending) >= MAX_PENDING
        ):
            # the core holds at most MAX_PENDING queued changes per app (bounded state):
            # refused with the reason rather than failing the worker
            d = replace(d, accepted=False, change=None, actions=(), notify=(d.app,),
                        reason=f"{MAX_PENDING} settings changes of app {d.app!r} already "
                        f"wait for the next tick; retry after it")  # fmt: skip
        if not d.accepted and not d.notify:  # not authenticated: no app is told
            # (dead_letter redacts a token: a version 1 command carried the app's in clear)
            dl = dead_letter(topics.COMMANDS, d.reason or "rejected", raw)
            return [Out(topics.DEADLETTER, None, dl.model_dump_json().encode())]
        cmd_time = d.command.time if d.command is not None else utc_from_us(now_us)
        if d.accepted:
            assert d.app is not None and d.command is not None
            self.accepted_commands += 1  # (first: the state changes below)
            # accepted during the tick of its event time (never later than the clock)
            k_cmd = self.clock.tick_of(to_us(cmd_time.timestamp()))
            k_now = self.clock.tick_of(now_us)
            accepted_k = max(0, min(k_cmd, k_now))
            if d.change is not None:
                self.state = queue_site_change(self.state, d.app, d.change, accepted_k)
                if not d.actions:  # no actuator will ack it: the ledger does, when in force
                    self.pending_settings[f"{d.app}|{d.command_id}"] = {
                        "app": d.app,
                        "command_id": d.command_id,
                        "k": accepted_k + 1,
                        "change": d.change.model_dump(mode="json"),
                    }
            for a in d.actions:
                signed = sign(a, self.key) if self.key else a
                outs.append(Out(topics.ACTUATOR_CONTAINERS, a.container.encode(), signed.to_json()))
                if a.action in ("suspend_container", "resume_container"):
                    s = set(self.suspended.get(d.app, ()))
                    (s.add if a.action == "suspend_container" else s.discard)(a.container)
                    self.suspended[d.app] = sorted(s)
            if d.actions:
                self.pending_acks[f"{d.app}|{d.command_id}"] = d.app
                mine = [k for k, a in self.pending_acks.items() if a == d.app]
                for k in mine[: max(0, len(mine) - PENDING_ACKS_PER_APP)]:
                    del self.pending_acks[k]  # oldest first: an ack naming its app still works
        outs.extend(self._lifecycle(d, cmd_time))
        return outs

    def _dedupe_key(self, d: Decision, raw: bytes) -> tuple[str, str]:
        """(bucket, idempotency key). A command id is only unique within the app that
        sent it, so the bucket is the app the command is authenticated as (its
        signature) and the key the app and the id: nobody can get another app's command
        dropped as a "re-delivery" by using its id first, nor push another app's ids out
        of its window, while a replayed copy of a signed command is dropped. Payloads
        not authenticated (or unparsable) dedupe on their exact bytes only."""
        if d.app is not None and d.command_id is not None:
            return d.app, f"{d.app}|{d.command_id}"
        return RAW_BUCKET, hashlib.sha256(raw).hexdigest()

    def _trim_seen(self, bucket: str) -> None:
        """Oldest first, down to SEEN_COMMANDS_PER_APP keys and SEEN_BYTES_PER_APP bytes
        (ids are up to 128 characters)."""
        seen = self.seen_commands[bucket]
        size = sum(len(k) for k in seen)
        while len(seen) > SEEN_COMMANDS_PER_APP or size > SEEN_BYTES_PER_APP:
            size -= len(seen.popitem(last=False)[0])

    def _lifecycle(self, d: Decision, when: datetime) -> list[Out]:
        typ = "command_accepted" if d.accepted else "command_rejected"
        data: dict[str, Any] = {"command_type": d.type}
        if d.accepted and d.change is not None:
            data["applies_from"] = "next tick"
            data["change"] = d.change.model_dump(mode="json")
        outs = []
        for app in d.notify:
            n = Notification(
                site=self.cfg.site.id,
                time=when,
                app=app,
                type=typ,
                command_id=d.command_id,
                reason=d.reason,
                data=data,
            )
            outs.append(Out(topics.notifications(app), (d.command_id or "").encode(), n.to_json()))
        return outs

    def ack(self, raw: bytes) -> list[Out]:
        """An actuator's ack -> ``command_applied`` / ``command_failed`` to its app."""
        raw = raw if raw is not None else b""  # a Kafka tombstone
        try:
            ack = ActuatorAck.model_validate_json(raw)
        except ValidationError as e:
            dl = dead_letter(topics.ACTUATOR_ACKS, describe_validation_error(e), raw)
            return [Out(topics.DEADLETTER, None, dl.model_dump_json().encode())]
        if self.key and not verify(ack, self.key):
            # only the actuators hold the key: a forged ack tells no app anything
            dl = dead_letter(topics.ACTUATOR_ACKS, BAD_SIGNATURE, raw)
            return [Out(topics.DEADLETTER, None, dl.model_dump_json().encode())]
        # command ids are per app: the ack's own app decides who is told
        app = ack.app
        if app is None:  # an ack without app: only an unambiguous pending command
            match = [k for k in self.pending_acks if k.endswith(f"|{ack.command_id}")]
            app = self.pending_acks[match[0]] if len(match) == 1 else None
        if app is None or app not in self.app_cfg:
            return []  # e.g. a site battery setpoint ack: no app to tell
        self.pending_acks.pop(f"{app}|{ack.command_id}", None)
        n = Notification(
            site=ack.site,
            time=ack.time,
            app=app,
            type="command_applied" if ack.ok else "command_failed",
            command_id=ack.command_id,
            reason=ack.error,
            data={"actuator": ack.actuator, "applied": ack.applied},
        )
        return [Out(topics.notifications(app), ack.command_id.encode(), n.to_json())]

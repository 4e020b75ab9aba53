"""The sites one ledger worker serves, and which of them it owns now.

Every ``streams.ledger`` worker started with the same site files joins one Faust consumer
group (``SiteGroup.app_id``). Telemetry, commands and actuator acks are keyed by site, so
all of a site's messages, and its rows in the ``snapshots`` and ``counters`` tables, are
on partition ``site_partition(site, partitions)`` of their topics (co-partitioned). Faust
assigns each partition to one worker: that worker owns the partition's sites, restores
their state from the tables' changelogs and serves them; a rebalance (a worker added,
stopped or killed) moves partitions, and with them sites (docs/ledger.md, Partitioning).

``LedgerGroup`` holds the ``LedgerService`` of each owned site, made on first use from the
recovered tables, dropped when its partition is revoked, and routes each message to its
site. No Faust import here: the wiring (streams/ledger_app.py) passes what it needs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.environment import internal_key
from ecovisor.contract.kafka_access import ledger_app_id
from streams.ledger_out import Out

_SITE_FIELD = re.compile(rb'"site"\s*:\s*"([^"\\]{1,128})"')
_APP_FIELD = re.compile(rb'"app"\s*:\s*"([^"\\]{1,128})"')
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class SiteGroup:
    """The configuration of a worker group: its sites, its name, its partitions."""

    name: str  # the group's Faust app id is ledger_app_id(name)
    sites: dict[str, EcovisorConfig]
    partitions: int

    @classmethod
    def of(cls, cfgs: list[EcovisorConfig], name: str | None = None,
           partitions: int | None = None) -> SiteGroup:  # fmt: skip
        """One site: named after it, one partition (as before groups). Several: ``name``
        is required, every site id and app id must be unique across the files (an
        app's notification topic is named after it alone)."""
        if not cfgs:
            raise ConfigError("no site configuration")
        sites: dict[str, EcovisorConfig] = {}
        apps: dict[str, str] = {}
        for c in cfgs:
            if c.site.id in sites:
                raise ConfigError(f"site {c.site.id!r} is configured twice")
            sites[c.site.id] = c
            for a in c.apps:
                if a.id in apps:
                    raise ConfigError(
                        f"app {a.id!r} is in sites {apps[a.id]!r} and {c.site.id!r}: app ids "
                        "must be unique across a group (one notification topic per app)"
                    )
                apps[a.id] = c.site.id
        # one worker process serves the group's sites with one set of platform services
        # (its /metrics page, the API it answers): they must share one internal key, or
        # a holder of one site's key would read another's state and metrics
        keys = {internal_key(c) for c in cfgs}
        if len(keys) > 1:
            raise ConfigError(
                "the sites of a group must share one internal key (the same "
                "$<site.internal_key_env> value, or none for every site): a worker serves "
                "their views and one /metrics page"
            )
        if name is None:
            if len(sites) > 1:
                raise ConfigError("several sites: name the group (--group NAME)")
            name = cfgs[0].site.id  # as before groups
        elif not _GROUP_NAME.match(name):  # it names Kafka topics and a consumer group
            raise ConfigError(f"group name {name!r}: use [A-Za-z0-9][A-Za-z0-9._-]*, "
                              "at most 100 characters")  # fmt: skip
        try:
            n = topics.check_partitions(partitions if partitions is not None else 1)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return cls(name=name, sites=sites, partitions=n)

    @property
    def app_id(self) -> str:
        return ledger_app_id(self.name)

    def partition(self, site: str) -> int:
        return topics.site_partition(site, self.partitions)

    @cached_property
    def app_sites(self) -> dict[str, str]:
        """App id -> its site id (unique across the group: ``of`` checks)."""
        return {a.id: s for s, c in self.sites.items() for a in c.apps}


class LedgerGroup:
    """The services of the sites this worker owns now. ``active()``: the partitions of
    ``ecovisor.telemetry`` Faust assigned to this worker (and recovered); ``make(cfg)``:
    a new ``LedgerService`` for a site (restored from the tables)."""

    def __init__(
        self,
        group: SiteGroup,
        active: Callable[[], set[int]],
        make: Callable[[EcovisorConfig], Any],
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        self.group = group
        self.active = active
        self.make = make
        # no rebalance under way: a service is made only then (a message's partition
        # proves ownership only then, and the tables are recovered)
        self.settled = settled
        self.services: dict[str, Any] = {}
        self.app_site = group.app_sites
        self.by_partition: dict[int, list[str]] = {}
        for s in group.sites:
            self.by_partition.setdefault(group.partition(s), []).append(s)
        # event mode: partition -> end offset the worker must read before it takes commands
        self.catch_up_to: dict[int, int] = {}
        self.caught_up: set[int] = set()
        self.reached: dict[int, int] = {}  # partition -> next offset after the last handed on
        # partitions whose first event since their assignment was checked against the
        # restored snapshots' offsets, and those waiting for the event a seek went back to
        self.expect: dict[int, int] = {}  # partition -> the next offset in sequence
        self.resync: dict[int, tuple[int, int]] = {}  # partition -> (offset wanted, gap at)
        self.last_event: dict[int, float] = {}  # partition -> monotonic time of its last event

    # --- ownership ------------------------------------------------------------------------
    def owns(self, site: str) -> bool:
        return site in self.group.sites and self.group.partition(site) in self.active()

    def service(self, site: str, delivered_on: int | None = None) -> Any | None:
        """The site's service if this worker owns the site now (made on first use).
        ``delivered_on``: the partition of the message asking; Faust delivers a partition's
        messages only to its owner, once its tables are recovered, so a message on the
        site's own partition proves ownership (the assignor's view may lag it)."""
        svc = self.services.get(site)
        if svc is not None:
            return svc
        if not self.settled():
            return None
        proven = delivered_on is not None and delivered_on == self.group.partition(site)
        if not (proven and site in self.group.sites) and not self.owns(site):
            return None
        svc = self.make(self.group.sites[site])
        svc.loaded()
        if self.group.partition(site) in self.caught_up:
            svc.caught_up.set()
        self.services[site] = svc
        return svc

    def owned(self) -> Iterator[Any]:
        """Every owned site's service (made now if not yet: a restored site must close its
        ticks in real time even before new telemetry arrives)."""
        for part in sorted(self.active()):
            for site in self.by_partition.get(part, ()):
                svc = self.service(site)
                if svc is not None:
                    yield svc

    def revoke(self, partitions: set[int]) -> None:
        """Partitions taken away: forget their sites (the next owner restores them from
        the tables; their unacknowledged telemetry is delivered to it again)."""
        for part in partitions:
            self.caught_up.discard(part)
            self.catch_up_to.pop(part, None)
            self.reached.pop(part, None)
            self.expect.pop(part, None)
            self.resync.pop(part, None)
            self.last_event.pop(part, None)
            for site in self.by_partition.get(part, ()):
                svc = self.services.pop(site, None)
                if svc is not None:
                    svc.leave(moved=True)  # (already, when it was handed over)
                    svc.unacked.clear()

    def assigned(self) -> None:
        """A new assignment: what each partition's reading state and site services hold
        is from before it (an event held across the revoke may have written it late), so
        every partition starts anew, as after a revoke (the sites are restored from the
        tables when next asked for)."""
        self.revoke(set(range(self.group.partitions)))

    def resume_offset(self, partition: int) -> int:
        """The offset a partition must be read from so that no site on it misses an event:
        the oldest of its sites' snapshot offsets + 1 (0 for a site without one)."""
        start: int | None = None
        for site in self.by_partition.get(partition, ()):
            svc = self.service(site, delivered_on=partition)
            if svc is None:
                continue
            done = svc.loaded().offsets.get(partition)
            nxt = 0 if done is None else done + 1
            start = nxt if start is None else min(start, nxt)
        return 0 if start is None else start

    # --- reading each partition in sequence ---------------------------------------------
    def position(self, part: int, off: int) -> bool | int | str:
        """Whether the telemetry event at ``off`` of ``part`` may be handed on: True; False
        (drop it: read before a seek, it comes again); an offset to seek back to (a gap:
        the events in between could be a site's, e.g. Faust seeked to a committed offset
        past the restored snapshot); "first": the partition's first event since its
        assignment (``position_first`` decides). Offsets of a partition are contiguous
        (no compaction, no transactions), so a gap is never expected; one that stays
        after a seek back (the broker skipped those offsets) is accepted."""
        self.last_event[part] = time.monotonic()
        rs = self.resync.get(part)
        if rs is not None:
            want, gap_at = rs
            # ``gap_at`` again: delivered anew after the seek (the one that showed the gap
            # is not seen twice), so the broker had nothing from ``want`` up to it
            if off in (want, gap_at):
                del self.resync[part]
                self.expect[part] = off + 1
                return True
            return False
        exp = self.expect.get(part)
        if exp is None:
            return "first"
        if off > exp:
            self.resync[part] = (exp, off)
            return exp
        self.expect[part] = max(exp, off + 1)  # at or behind: the sites skip what they hold
        return True

    def position_first(self, part: int, off: int, earliest: int) -> bool | int:
        """The first event since the assignment must not be past the oldest offset the
        partition's sites' restored snapshots reflect (``resume_offset``, at least the
        partition's ``earliest`` offset): else seek back there."""
        start = max(self.resume_offset(part), earliest)
        if off <= start:
            self.expect[part] = off + 1
            return True
        self.resync[part] = (start, off)
        return start

    # --- routing ----------------------------------------------------------------------------
    def site_of_key(self, key: bytes | None, raw: bytes, by_app: bool) -> str | None:
        """The configured site a message is for: its key (the site; for commands also an
        app, as before groups), else the payload's ``site`` (or ``app``) field; one site
        configured: that one (its ledger decides)."""
        if key:
            k = key.decode("utf-8", "replace")
            if k in self.group.sites:
                return k
            if by_app and k in self.app_site:
                return self.app_site[k]
        if len(self.group.sites) == 1:
            return next(iter(self.group.sites))
        m = (_APP_FIELD if by_app else _SITE_FIELD).search(raw[:4096])
        if m is None:
            return None
        name = m.group(1).decode("utf-8", "replace")
        return self.app_site.get(name) if by_app else (name if name in self.group.sites else None)

    def misrouted(self, origin: str, site: str | None, partition: int, raw: bytes) -> Out:
        """A dead letter for a command or ack this worker cannot hand to its site."""
        from ecovisor.contract.operator_messages import dead_letter

        if site is None:
            why = "no configured site or app: key it by its site id"
        else:
            why = (f"site {site!r} is on partition {self.group.partition(site)}, this message "
                   f"was on partition {partition}: key it by its site id")  # fmt: skip
        dl = dead_letter(origin, why, raw)
        return Out(topics.DEADLETTER, None, dl.model_dump_json().encode())

    # --- event mode: commands wait for the telemetry already in Kafka -------------------------
    def note_offset(self, partition: int, offset: int) -> None:
        """The agent handed telemetry at ``offset`` of ``partition`` to its site."""
        self.reached[partition] = offset + 1
        self.check_caught_up(partition)

    def check_caught_up(self, partition: int, committed: int | None = None) -> None:
        """Caught up: the end offset taken at assignment is reached, by the events handed
        on or by the committed offset the worker resumed from."""
        end = self.catch_up_to.get(partition)
        if end is None or partition in self.caught_up:
            return
        done = max(self.reached.get(partition, 0), committed or 0)
        if end == 0 or done >= end:
            self.mark_caught_up(partition)

    def mark_caught_up(self, partition: int) -> None:
        self.caught_up.add(partition)
        for site in self.by_partition.get(partition, ()):
            svc = self.services.get(site)
            if svc is not None:
                svc.caught_up.set()


def not_ready_reason(*, failed: BaseException | None, joined: bool, rebalancing: bool,
                     recovered: bool, owned: set[int], caught_up: set[int],
                     event_mode: bool) -> str | None:  # fmt: skip
    """Why a worker of a group does not serve its share yet, None when it does (its
    ``GET /ready``, docs/ledger.md): a task failed; it has not joined the group yet, or
    a rebalance is under way; its tables are not recovered; event mode: a telemetry
    partition it owns has not been read up to where it stood at the assignment (until
    then its sites refuse no command but hold them: ``LedgerService.command``). A worker
    that owns no partition (more workers than partitions) is ready."""
    if failed is not None:  # (its message may name apps: the log has it, not /ready)
        return "a task of the worker failed (its log says which and why)"
    if not joined:
        return "joining the consumer group"
    if rebalancing:
        return "the group is rebalancing"
    if not recovered:
        return "recovering the tables from their changelogs"
    if event_mode:
        behind = sorted(owned - caught_up)
        if behind:
            return f"reading the telemetry already in partition(s) {behind}"
    return None


"""Who may read and write which Kafka topic: one principal per deployable service that
uses Kafka, the topics it reads and writes, and the ``kafka-acls.sh`` script that grants
exactly that on Apache Kafka (docker compose: ``deploy/kafka/kafka-acls.sh``, generated
by ``ecovisor config kafka-acls``; docs/reliability.md#kafka-in-docker-compose-saslscram-and-acls).

Pure: the table is computed from the site configuration (its apps name the notification
topics, its site id the ledger's Faust app) and the topic names of
``ecovisor.contract.topics``. Which service is which principal is the service's entry
module (``python -m <module>``). The edge collectors, the container launchers and the
policies have no principal: they never talk to Kafka (MQTT and the REST API).

A principal logs in with SASL/SCRAM (``SCRAM_MECHANISM``) as its ``name``; its password
reaches the service as ``ECOVISOR_KAFKA_PASSWORD`` and the ACL script as
``password_env(name)``.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192

BRIDGE = "bridge"
LEDGER = "ledger"
HISTORY = "history"
ACTUATOR_CONTAINERS = "actuator-containers"
ACTUATOR_BATTERY = "actuator-battery"
API = "api"
ADMIN = "admin"

Operation = Literal["Read", "Write", "Create", "Describe"]
OPERATIONS: tuple[Operation, ...] = ("Read", "Write", "Create", "Describe")


def ledger_app_id(site: str) -> str:
    """The ledger's Faust app id for a site: its consumer group, and the prefix of its
    internal topics (``<id>-<table>-changelog``)."""
    return f"ecovisor-ledger-{site}"


def ledger_internal_prefix(site: str) -> str:
    """The prefix of every topic Faust names after the ledger's app (its table
    changelogs); with the dash, so site ``demo`` does not cover ``demo2``'s."""
    return ledger_app_id(site) + "-"


@dataclass(frozen=True)
class KafkaPrincipal:
    """One SASL user and what its ACLs allow. ``read``/``write``: Read/Write on literal
    topics (each implies Describe); ``create``: Create and Describe (topics it makes when
    missing); ``describe``: Describe only (topics it looks up but never reads or writes);
    ``prefixes``: Read, Write, Create and Describe on every topic with one of these
    prefixes; ``groups``: Read on these consumer groups."""

    name: str
    modules: tuple[str, ...]  # the `python -m` entry points that log in as it
    role: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    create: tuple[str, ...] = ()
    describe: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


def kafka_principals(cfg: EcovisorConfig) -> list[KafkaPrincipal]:
    """Every Kafka principal of the site, with the topics each service reads and writes
    (the code that does it is named in ``role``)."""
    site = cfg.site.id
    notifications = tuple(topics.notifications(a.id) for a in cfg.apps)
    everything = tuple(topics.all_topics([a.id for a in cfg.apps]))
    return [
        KafkaPrincipal(
            BRIDGE,
            ("streams.bridge",),
            "MQTT telemetry into Kafka; refused input dead-lettered",
            write=(topics.TELEMETRY, topics.DEADLETTER),
        ),
        KafkaPrincipal(
            LEDGER,
            ("streams.ledger",),
            "the Faust ledger: telemetry, commands and acks in; entries, notifications, "
            "actuator messages, alerts out; its tables' changelogs and consumer group",
            read=(topics.TELEMETRY, topics.COMMANDS, topics.ACTUATOR_ACKS),
            write=(
                topics.LEDGER,
                *notifications,
                topics.ACTUATOR_CONTAINERS,
                topics.ACTUATOR_BATTERY,
                topics.ALERTS,
                topics.DEADLETTER,
            ),
            # prepare_topics looks up every topic of the site before creating missing ones
            describe=(topics.CONTAINERS,),
            prefixes=(ledger_internal_prefix(site),),
            groups=(ledger_app_id(site),),
        ),
        KafkaPrincipal(
            HISTORY,
            ("streams.history",),
            "ledger entries into the time-series store",
            read=(topics.LEDGER,),
        ),
        KafkaPrincipal(
            ACTUATOR_CONTAINERS,
            ("actuators.containers",),
            "container actions in (replayed on start), acks and replica events out",
            read=(topics.ACTUATOR_CONTAINERS, topics.ACTUATOR_ACKS),
            write=(topics.ACTUATOR_ACKS, topics.CONTAINERS, topics.DEADLETTER),
        ),
        KafkaPrincipal(
            ACTUATOR_BATTERY,
            ("actuators.battery",),
            "battery setpoints in (replayed on start), acks out",
            read=(topics.ACTUATOR_BATTERY, topics.ACTUATOR_ACKS),
            write=(topics.ACTUATOR_ACKS, topics.DEADLETTER),
        ),
        KafkaPrincipal(
            API,
            ("ecovisor.api",),
            "the REST API: apps' commands out, every app's notifications in (each app "
            "sees only its own, by its token)",
            read=notifications,
            write=(topics.COMMANDS,),
        ),
        KafkaPrincipal(
            ADMIN,
            ("ecovisor.cli",),
            "the `topics` one-shot and the operator's CLI (tail, export, cmd): creates "
            "and reads every topic, publishes commands",
            read=everything,
            write=(topics.COMMANDS,),
            create=everything,
        ),
    ]


def kafka_principal(cfg: EcovisorConfig, name: str) -> KafkaPrincipal:
    for p in kafka_principals(cfg):
        if p.name == name:
            return p
    raise KeyError(f"no Kafka principal {name!r}")


def principal_of_module(cfg: EcovisorConfig, module: str) -> KafkaPrincipal | None:
    """The principal a service started as ``python -m <module>`` logs in as; None for a
    service that does not use Kafka."""
    for p in kafka_principals(cfg):
        if module in p.modules:
            return p
    return None


def password_env(name: str) -> str:
    """The variable that holds a principal's password where the users are created
    (``ECOVISOR_KAFKA_PASSWORD_ACTUATOR_CONTAINERS`` for ``actuator-containers``)."""
    return "ECOVISOR_KAFKA_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


@dataclass(frozen=True, order=True)
class Acl:
    """One allow ACL: ``principal`` may ``operation`` on a topic or group named (or, for
    ``prefixed``, starting with) ``name``. Kafka denies whatever no ACL allows
    (``allow.everyone.if.no.acl.found=false``)."""

    principal: str
    resource: Literal["topic", "group"]
    pattern: Literal["literal", "prefixed"]
    name: str
    operation: Operation

    def covers(self, topic: str) -> bool:
        if self.resource != "topic":
            return False
        return topic.startswith(self.name) if self.pattern == "prefixed" else topic == self.name


def principal_acls(p: KafkaPrincipal) -> list[Acl]:
    """The allow ACLs of one principal (Describe only where no Read or Write implies it)."""
    out: set[Acl] = set()
    for t in p.read:
        out.add(Acl(p.name, "topic", "literal", t, "Read"))
    for t in p.write:
        out.add(Acl(p.name, "topic", "literal", t, "Write"))
    for t in p.create:
        out.add(Acl(p.name, "topic", "literal", t, "Create"))
    implied = set(p.read) | set(p.write)
    for t in (*p.create, *p.describe):
        if t not in implied:
            out.add(Acl(p.name, "topic", "literal", t, "Describe"))
    for prefix in p.prefixes:
        for op in OPERATIONS:
            out.add(Acl(p.name, "topic", "prefixed", prefix, op))
    for g in p.groups:
        out.add(Acl(p.name, "group", "literal", g, "Read"))
    return sorted(out)


def kafka_acls(cfg: EcovisorConfig) -> list[Acl]:
    """Every allow ACL of the site."""
    return sorted(a for p in kafka_principals(cfg) for a in principal_acls(p))


def allowed(acls: Iterable[Acl], topic: str, operation: Operation) -> set[str]:
    """The principals that may ``operation`` on ``topic`` under ``acls``."""
    return {a.principal for a in acls if a.operation == operation and a.covers(topic)}


# --- the script ----------------------------------------------------------------------
_HEADER = """\
#!/bin/sh
# Kafka SASL/SCRAM users and ACLs of site {site!r}: one principal per service that uses
# Kafka (ecovisor/contract/kafka_access.py; docs/reliability.md, "Kafka in docker
# compose"). Generated by
#   {command}
# Do not edit: regenerate (tests/unit/test_compose_kafka_acl.py fails while this file
# differs from the generated one).
#
# Run it as the broker's super user: docker compose's kafka-setup one-shot runs it in the
# broker's network namespace against the loopback PLAINTEXT listener (User:ANONYMOUS,
# the broker's own principal). Each principal's password comes from the variable named
# below (no ',', '[', ']', '=': kafka-configs.sh would split on them). Idempotent: a
# SCRAM credential is replaced, an ACL that exists is kept. ACLs of a principal or an
# app no longer in the table are not removed (kafka-acls.sh --remove).
set -eu

BOOTSTRAP="${{KAFKA_BOOTSTRAP:-127.0.0.1:9094}}"
BIN="${{KAFKA_BIN:-/opt/kafka/bin}}"

user() {{  # user NAME PASSWORD: the principal's {mechanism} credential
  case "$2" in
    "" | *[],[=]*)
      echo "kafka-acls.sh: the password of $1 is empty or has one of , [ ] =" >&2
      exit 1 ;;
  esac
  "$BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter \\
    --entity-type users --entity-name "$1" \\
    --add-config "{mechanism}=[iterations={iterations},password=$2]"
}}

allow() {{  # allow NAME KAFKA-ACLS-OPTIONS...: allow User:NAME (from any host)
  name=$1
  shift
  "$BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --add \\
    --allow-principal "User:$name" "$@" >/dev/null
  echo "allowed User:$name $*"
}}
"""


def _allow_lines(p: KafkaPrincipal) -> list[str]:
    """One ``allow`` per (operations, resource kind, pattern): kafka-acls.sh grants every
    listed operation on every listed resource, and each call starts a JVM."""
    by_name: dict[tuple[str, str, str], set[str]] = {}
    for a in principal_acls(p):
        by_name.setdefault((a.resource, a.pattern, a.name), set()).add(a.operation)
    groups: dict[tuple[tuple[str, ...], str, str], list[str]] = {}
    for (resource, pattern, name), ops in by_name.items():
        key = (tuple(o for o in OPERATIONS if o in ops), resource, pattern)
        groups.setdefault(key, []).append(name)
    lines = []
    for (ops, resource, pattern), names in sorted(groups.items()):
        args = []
        if pattern == "prefixed":
            args += ["--resource-pattern-type", "prefixed"]
        for op in ops:
            args += ["--operation", op]
        for n in sorted(names):
            args += [f"--{resource}", n]
        words = ["allow", p.name, *args]
        lines.append(" \\\n    ".join(_wrap(words)))
    return lines


def _wrap(words: list[str], width: int = 84) -> list[str]:
    """Shell words joined into lines of at most ``width`` characters (option and value
    kept together)."""
    quoted = [shlex.quote(w) for w in words]
    chunks: list[str] = []
    i = 0
    while i < len(quoted):  # pair "--opt value"
        if quoted[i].startswith("--") and i + 1 < len(quoted):
            chunks.append(f"{quoted[i]} {quoted[i + 1]}")
            i += 2
        else:
            chunks.append(quoted[i])
            i += 1
    lines: list[str] = []
    cur = ""
    for c in chunks:
        if cur and len(cur) + 1 + len(c) > width:
            lines.append(cur)
            cur = c
        else:
            cur = f"{cur} {c}" if cur else c
    if cur:
        lines.append(cur)
    return lines


def render_acl_script(cfg: EcovisorConfig, command: str = "ecovisor config kafka-acls") -> str:
    """The shell script that creates every principal's SCRAM credential and grants its
    ACLs (``kafka-configs.sh``, ``kafka-acls.sh`` of Apache Kafka 3.5 or later, KRaft).
    ``command``: how it was generated, for its header."""
    out = [
        _HEADER.format(
            site=cfg.site.id,
            command=command,
            mechanism=SCRAM_MECHANISM,
            iterations=SCRAM_ITERATIONS,
        )
    ]
    for p in kafka_principals(cfg):
        var = password_env(p.name)
        about = f"{p.name} ({', '.join(p.modules)}): {p.role}"
        out.append("")
        out.extend(textwrap.wrap(about, 86, initial_indent="# ", subsequent_indent="# "))
        out.append(f'user {p.name} "${{{var}:?}}"')
        out.extend(_allow_lines(p))
    out.append("")
    return "\n".join(out)


def parse_acl_script(text: str) -> list[Acl]:
    """The ACLs an ``allow`` script grants (read back from its ``allow`` lines): what the
    compose tests check against the table, without a broker."""
    joined = text.replace("\\\n", " ")
    acls: list[Acl] = []
    for line in joined.splitlines():
        if not line.startswith("allow "):
            continue
        words = shlex.split(line, comments=True)
        principal, args = words[1], words[2:]
        pattern: Literal["literal", "prefixed"] = "literal"
        ops: list[Operation] = []
        resources: list[tuple[Literal["topic", "group"], str]] = []
        for opt, val in zip(args[::2], args[1::2], strict=True):
            if opt == "--resource-pattern-type":
                if val not in ("literal", "prefixed"):
                    raise ValueError(f"unexpected pattern type {val!r}")
                pattern = "prefixed" if val == "prefixed" else "literal"
            elif opt == "--operation":
                if val not in OPERATIONS:
                    raise ValueError(f"unexpected operation {val!r}")
                ops.append(val)  # type: ignore[arg-type]
            elif opt == "--topic":
                resources.append(("topic", val))
            elif opt == "--group":
                resources.append(("group", val))
            else:
                raise ValueError(f"unexpected kafka-acls option {opt!r}")
        acls.extend(Acl(principal, r, pattern, n, op) for r, n in resources for op in ops)
    return sorted(set(acls))

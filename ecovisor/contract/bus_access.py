"""Who may publish and subscribe what on the site's MQTT broker, and with which
credentials (docs/reliability.md#authentication-on-the-bus).

One principal per edge device (a solar, carbon or battery source, a node's power
collector), one per application (its own app metrics), the bridge (reads the site's
telemetry) and the battery actuator (writes the battery devices' setpoints). The
embedded stack renders these as the broker's password file and ACLs
(``ecovisor.embedded.mqtt_auth``); every client takes its credentials from
``mqtt_credentials``. The same rules name each telemetry source after what it measures
(``telemetry_source``), so the bridge can bind a message to the one principal allowed to
publish it: a node's collector cannot report another node's container under its own
topic.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.environment import internal_key

BRIDGE = "bridge"
ACTUATOR_BATTERY = "actuator-battery"

# site.<section> sources and the telemetry kind each one publishes
SOURCE_SECTIONS = {"solar": "solar", "carbon": "carbon", "battery": "battery"}


def device_username(source_id: str) -> str:
    return f"device-{source_id}"


def node_username(node: str) -> str:
    return f"node-{node}"


def app_username(app: str) -> str:
    return f"app-{app}"


# --- the one naming rule of telemetry sources ------------------------------------------
def container_source(container: str) -> str:
    return f"ctr-{container}"


def node_source(node: str) -> str:
    return f"node-{node}"


def node_batch_source(node: str) -> str:
    """The source of a node's container batches (``NodeBatch``, either version): not the node
    source, whose seqs count the node's own counters."""
    return f"batch-{node}"


def app_metrics_source(app: str) -> str:
    return f"app-{app}"


def site_source_id(cfg: EcovisorConfig, section: str) -> str:
    """The source id of ``site.<section>`` (solar, carbon, battery): its ``id``, else the
    section's name."""
    src = getattr(cfg.site, section)
    return (src.id if src is not None else None) or section


def telemetry_source(cfg: EcovisorConfig, msg: object) -> str | None:
    """The one source a telemetry message may come from, by what it is about; None
    where the contract does not bind it."""
    kind = getattr(msg, "kind", None)
    if kind == "container":
        return container_source(msg.container)  # type: ignore[attr-defined]
    if kind == "node":
        return node_source(msg.node)  # type: ignore[attr-defined]
    if kind == "node_batch":
        return node_batch_source(msg.node)  # type: ignore[attr-defined]
    if kind == "app_metrics":
        return app_metrics_source(msg.app)  # type: ignore[attr-defined]
    if kind in SOURCE_SECTIONS.values():
        return site_source_id(cfg, kind)  # type: ignore[arg-type]
    return None


# --- principals ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MqttPrincipal:
    """One MQTT user: the exact topics (or filters) it may publish and subscribe to."""

    username: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    app: str | None = None  # an application's principal (its token is its password)


def mqtt_principals(cfg: EcovisorConfig) -> list[MqttPrincipal]:
    """Every principal of the site, in a stable order."""
    site = cfg.site.id
    out = [
        MqttPrincipal(BRIDGE, subscribe=(topics.mqtt_site_telemetry(site),)),
    ]
    battery = cfg.site.battery
    if battery is not None:
        dev = site_source_id(cfg, "battery")
        out.append(
            MqttPrincipal(ACTUATOR_BATTERY, publish=(topics.mqtt_battery_control(site, dev),))
        )
    for section, kind in SOURCE_SECTIONS.items():
        if getattr(cfg.site, section) is None:
            continue
        sid = site_source_id(cfg, section)
        sub = (topics.mqtt_battery_control(site, sid),) if section == "battery" else ()
        out.append(
            MqttPrincipal(
                device_username(sid),
                publish=(topics.mqtt_telemetry(site, kind, sid),),
                subscribe=sub,
            )
        )
    by_node: dict[str, list[str]] = {n.id: [] for n in cfg.site.nodes}
    for cid, p in sorted(cfg.placements().items()):
        by_node.setdefault(p.node, []).append(cid)
    for node, containers in by_node.items():
        pub = [
            topics.mqtt_telemetry(site, "node", node_source(node)),
            topics.mqtt_telemetry(site, "node_batch", node_batch_source(node)),
        ]
        pub += [topics.mqtt_telemetry(site, "container", container_source(c)) for c in containers]
        out.append(MqttPrincipal(node_username(node), publish=tuple(pub)))
    for a in cfg.apps:
        out.append(
            MqttPrincipal(
                app_username(a.id),
                publish=(topics.mqtt_telemetry(site, "app_metrics", app_metrics_source(a.id)),),
                app=a.id,
            )
        )
    return _merged(out)


def _merged(ps: list[MqttPrincipal]) -> list[MqttPrincipal]:
    """One entry per username (two site sources configured with the same id share one
    principal and so may publish each other's kind)."""
    seen: dict[str, MqttPrincipal] = {}
    for p in ps:
        q = seen.get(p.username)
        if q is None:
            seen[p.username] = p
        else:
            seen[p.username] = MqttPrincipal(
                p.username, q.publish + p.publish, q.subscribe + p.subscribe, q.app or p.app
            )
    return list(seen.values())


def _configured_credential(cfg: EcovisorConfig, username: str) -> str | None:
    for section in SOURCE_SECTIONS:
        src = getattr(cfg.site, section)
        if src is not None and device_username(site_source_id(cfg, section)) == username:
            return src.credential
    for n in cfg.site.nodes:
        if node_username(n.id) == username:
            return n.credential
    return None


def derived_password(key: str, site: str, username: str) -> str:
    """A principal's password derived from the site's internal key, so the services
    that hold the key need no password list (an edge device outside the stack gets its
    own with ``ecovisor config mqtt-auth`` or a ``credential`` in the site file)."""
    msg = f"ecovisor-mqtt\0{site}\0{username}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def session_client_id(base: str, credentials: tuple[str, str] | None) -> str:
    """The MQTT client id of a client logged in with ``credentials``: ``base`` and a tag
    derived from the principal's password. A broker lets one session per client id, and
    a client connecting with a taken id disconnects the other (and, with a clean
    session, discards its queued messages): an app knowing the bridge's id could keep it
    off. The tag is stable (the bridge's persistent session survives its restarts) and
    only the principal can compute it. Anonymous: ``base`` as it is."""
    if credentials is None:
        return base
    user, password = credentials
    tag = hmac.new(password.encode(), f"ecovisor-client\0{user}\0{base}".encode(),
                   hashlib.sha256).hexdigest()[:16]  # fmt: skip
    return f"{base[:100]}-{tag}"


def mqtt_password(cfg: EcovisorConfig, username: str, key: str | None = None) -> str | None:
    """The password of a principal: an app's token; a device's or node's configured
    ``credential``; else derived from the internal key (``key`` or the configured one).
    None when the site has none of them: the broker is then anonymous."""
    for a in cfg.apps:
        if app_username(a.id) == username:
            return a.token
    configured = _configured_credential(cfg, username)
    if configured:
        return configured
    key = key or internal_key(cfg)
    return derived_password(key, cfg.site.id, username) if key else None


def mqtt_credentials(cfg: EcovisorConfig, username: str) -> tuple[str, str] | None:
    """(username, password) for a client of the site's broker, or None (anonymous)."""
    pw = mqtt_password(cfg, username)
    return (username, pw) if pw else None


def bus_authenticated(cfg: EcovisorConfig) -> bool:
    """Is the site's MQTT broker authenticated (the bridge then binds every telemetry
    message to its source's principal)? Yes whenever the site has an internal key."""
    return internal_key(cfg) is not None

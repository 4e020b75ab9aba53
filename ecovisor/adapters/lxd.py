"""LXD backend of a container: an LXD instance through pylxd, as the Ecovisor prototype
controlled its containers: ``limits.cpu.allowance`` as a hard time quota,
freeze/unfreeze through the instance state, usage from the state, and copies of a
template instance for horizontal scaling. See ``ecovisor.adapters.backends``.
"""

from __future__ import annotations

from typing import Any

from ecovisor.adapters.backends import BackendError, ContainerBackend
from ecovisor.core.power_cap import cores_to_quota_us

ALLOWANCE_PERIOD_MS = 100


def cores_to_allowance(cores: float) -> str:
    """LXD ``limits.cpu.allowance`` as a hard limit: "<quota>ms/<period>ms". The quota
    in µs comes from the product's one rule (``cores_to_quota_us``: down, at least the
    kernel's 1 ms); the allowance is written in whole ms, to the nearest ms (a cap's
    quota that is 1 µs short of a whole ms by float noise stays that ms)."""
    quota_us = cores_to_quota_us(cores, ALLOWANCE_PERIOD_MS * 1000)
    return f"{round(quota_us / 1000)}ms/{ALLOWANCE_PERIOD_MS}ms"


def allowance_to_cores(value: str | None) -> float | None:
    """Cores of a hard ``limits.cpu.allowance`` ("25ms/100ms"); None for unset or a soft
    percentage (a share under contention, not a limit)."""
    if not value or value.endswith("%"):
        return None
    quota, _, period = value.partition("/")
    try:
        return float(quota.removesuffix("ms")) / float(period.removesuffix("ms"))
    except ValueError:
        raise BackendError(f"unreadable limits.cpu.allowance {value!r}") from None


ALLOWANCE_KEY = "limits.cpu.allowance"
# the statuses of a started instance (a suspended replica is frozen, still up)
UP_STATUSES = ("Running", "Frozen")


class LxdBackend(ContainerBackend):
    """An LXD instance. ``endpoint`` is a unix socket path or an https/http URL; None
    uses the local LXD socket. The pylxd client is created lazily and dropped on a
    connection failure, so an LXD restart is picked up on the next action."""

    def __init__(
        self,
        instance: str,
        endpoint: str | None = None,
        cert: tuple[str, str] | None = None,
        verify: bool | str = True,
        timeout: float = 5.0,
    ) -> None:
        self.instance = instance
        self.endpoint = endpoint
        self.cert, self.verify, self.timeout = cert, verify, timeout
        self.name = instance
        self._client: Any = None

    def _lxd(self) -> Any:
        import pylxd

        if self._client is None:
            try:
                self._client = pylxd.Client(
                    endpoint=self.endpoint, cert=self.cert, verify=self.verify, timeout=self.timeout
                )
            except Exception as e:  # pylxd raises several types for one cause
                raise BackendError(
                    f"LXD at {self.endpoint or 'local socket'} unreachable: {e}"
                ) from None
        return self._client

    def _call(self, fn: Any) -> Any:
        from pylxd import exceptions as lxd_exc
        from requests.exceptions import RequestException

        try:
            return fn(self._lxd())
        except lxd_exc.NotFound:
            raise BackendError(f"LXD instance {self.instance!r} not found") from None
        except (lxd_exc.LXDAPIException, lxd_exc.ClientConnectionFailed) as e:
            self._client = None
            raise BackendError(f"LXD error on {self.instance!r}: {e}") from None
        except (RequestException, OSError) as e:
            self._client = None
            raise BackendError(
                f"LXD at {self.endpoint or 'local socket'} unreachable: {e}"
            ) from None

    def _instance(self, client: Any) -> Any:
        return client.instances.get(self.instance)

    def exists(self) -> bool:
        try:
            return bool(self._call(lambda c: c.instances.exists(self.instance)))
        except BackendError:
            return False

    def status(self) -> str | None:
        """LXD's status of the instance ("Running", "Stopped", "Frozen", ...), None if
        there is no such instance; BackendError if LXD cannot be asked."""
        from pylxd import exceptions as lxd_exc

        def get(c: Any) -> str | None:
            try:
                return str(self._instance(c).status)
            except lxd_exc.NotFound:
                return None

        return self._call(get)

    def running(self) -> bool:
        """Started: running, or frozen by a suspend (a copy that exists but is stopped is
        not: see ``start_copy``)."""
        return self.status() in UP_STATUSES

    def get_cpu_limit(self) -> float | None:
        inst = self._call(self._instance)
        return allowance_to_cores(inst.config.get(ALLOWANCE_KEY))

    def get_allowance(self) -> str | None:
        return self._call(self._instance).config.get(ALLOWANCE_KEY)

    def set_allowance(self, value: str | None) -> None:
        """Write the raw allowance (None deletes the key, LXD's default: unlimited)."""

        def put(c: Any) -> None:
            inst = self._instance(c)
            config = dict(inst.config)
            if value is None:
                config.pop(ALLOWANCE_KEY, None)
            else:
                config[ALLOWANCE_KEY] = value
            inst.config = config
            inst.save(wait=True)

        self._call(put)

    def snapshot_limit(self) -> Any:
        # the raw allowance, so a soft "50%" share comes back as it was
        return self.get_allowance()

    def restore_limit(self, snapshot: Any) -> float | None:
        self.set_allowance(snapshot)
        return allowance_to_cores(snapshot)

    def set_cpu_limit(self, cores: float | None) -> float | None:
        self.set_allowance(None if cores is None else cores_to_allowance(cores))
        return None if cores is None else allowance_to_cores(cores_to_allowance(cores))

    def freeze(self) -> None:
        self._call(lambda c: self._instance(c).freeze(wait=True))

    def thaw(self) -> None:
        self._call(lambda c: self._instance(c).unfreeze(wait=True))

    def is_frozen(self) -> bool:
        return bool(self._call(lambda c: self._instance(c).status == "Frozen"))

    def usage_s(self) -> float:
        st = self._call(lambda c: self._instance(c).state())
        return float((st.cpu or {}).get("usage", 0)) / 1e9

    # horizontal scaling: copy a template instance, start, stop, delete
    def start_copy(self, source: str) -> None:
        """Make this instance a running copy of ``source``: copied if it does not exist,
        then started unless it runs. A copy whose start failed earlier (e.g. pylxd's
        timeout) is started now rather than left stopped."""

        def start(c: Any) -> None:
            if not c.instances.exists(self.instance):
                c.instances.create(
                    {"name": self.instance, "source": {"type": "copy", "source": source}},
                    wait=True,
                )
            inst = self._instance(c)
            if inst.status not in UP_STATUSES:
                inst.start(wait=True)

        self._call(start)

    def destroy(self) -> None:
        def delete(c: Any) -> None:
            inst = self._instance(c)
            if inst.status != "Stopped":
                inst.stop(wait=True)
            inst.delete(wait=True)

        self._call(delete)

    def describe(self) -> dict[str, Any]:
        return {"backend": "lxd", "instance": self.instance, "endpoint": self.endpoint}

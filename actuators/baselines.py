"""The container actuator's durable record of each container's CPU limit before its
first cap (its baseline), written to a local file *before* the cap is, so a crash
between the quota write and the acknowledgement cannot make the restarted actuator take
the cap it wrote itself for the original limit (found by reliability/chaos.py; the
acknowledgements on Kafka carry the same baseline, but only once they are published).

One small JSON object ``{container: {"cpus": float|None, "raw": any}}``, replaced
atomically (temporary file, fsync, rename, fsync of the directory)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ecovisor.adapters.backends import BackendError

log = logging.getLogger("ecovisor.actuator.containers")


class BaselineStore:
    """Baselines by container, kept in ``path`` (None: in memory only, as in tests of
    other parts)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                self._data = {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}
            except (OSError, ValueError, TypeError, AttributeError) as e:
                # a damaged file: the baselines in the acknowledgements still apply
                log.warning("ignoring unreadable baseline file %s: %s", path, e)

    def get(self, container: str) -> tuple[float | None, Any] | None:
        """(cpus, raw) recorded for ``container``, or None."""
        rec = self._data.get(container)
        return None if rec is None else (rec.get("cpus"), rec.get("raw"))

    def put(self, container: str, cpus: float | None, raw: Any) -> None:
        """Record a baseline durably (returns once it is on disk). BackendError when it
        cannot be written (the caller must then not write the cap), and nothing is kept:
        a baseline only in memory would let the next cap go ahead unrecorded."""
        before = self._data.get(container)
        self._data[container] = {"cpus": cpus, "raw": raw}
        try:
            self._write()
        except BackendError:
            if before is None:
                del self._data[container]
            else:
                self._data[container] = before
            raise

    def keep_only(self, containers: set[str]) -> None:
        """Forget the baselines of containers no action in the actuator topic's history
        touches (left from an earlier stack whose broker is gone): a new first cap
        records the limit it finds then."""
        stale = set(self._data) - containers
        if stale:
            for c in stale:
                del self._data[c]
            self._write()

    def _write(self) -> None:
        """BackendError with the reason when the file cannot be written (state dir not
        writable, disk full): a failed action, not a crash of the actuator."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as f:
                json.dump(self._data, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise BackendError(
                f"cannot record baselines in {self.path}: {e.strerror or e}"
            ) from None

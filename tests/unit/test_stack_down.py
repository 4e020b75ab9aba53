"""`ecovisor down` never hangs: every wait is bounded and ends in a clear message, even
when supervisord accepts the stop request and never answers (e.g. stuck on a process of a
frozen cgroup that does not die on SIGKILL). No broker, no real supervisord: a stand-in
process holds the pid file and the XML-RPC proxy is replaced by one that blocks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ecovisor.embedded import stack


class _StuckSupervisor:
    """An XML-RPC proxy whose calls block until released (a supervisord in STOPPING)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.supervisor = self

    def _block(self, *_a: Any) -> None:
        self.release.wait(600)

    stopAllProcesses = getAllProcessInfo = shutdown = _block  # noqa: N815


def test_down_is_bounded_when_supervisord_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    release = threading.Event()
    try:
        (tmp_path / "supervisord.pid").write_text(str(standin.pid))
        monkeypatch.setattr(stack, "rpc", lambda _sd: _StuckSupervisor(release))
        said: list[str] = []
        rc: list[int] = []
        t0 = time.monotonic()
        th = threading.Thread(
            target=lambda: rc.append(stack.down(tmp_path, said.append, timeout=1.0)),
            daemon=True,
        )
        th.start()
        th.join(20)
        took = time.monotonic() - t0
        assert not th.is_alive(), f"down hung (said so far: {said})"
        assert took < 12, f"down took {took:.1f} s with a 1 s timeout"
        assert any("did not stop within 1 s" in m for m in said), said
        assert standin.wait(5) < 0, "the stuck supervisord was not killed"
        assert rc == [0] and said[-1] == "stack stopped", said
    finally:
        release.set()
        if standin.poll() is None:
            standin.kill()
            standin.wait()

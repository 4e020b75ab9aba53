"""The consumers' fetch wait (``--fetch-wait-ms`` of the ledger, ``--notify-fetch-wait-ms``
of the API; the pipeline replay sets 2 ms): at least 1 ms, since the embedded broker
answers a fetch without wait with no records (docs/replay-pipeline.md, Speed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ecovisor.adapters import kafka_async
from ecovisor.adapters.kafka import (
    FETCH_WAIT_MAX_MS,
    LINGER_MAX_MS,
    assigned_consumer,
    checked_fetch_wait,
    checked_linger,
    fetch_wait_arg,
    linger_arg,
)
from ecovisor.api.command_bus import KafkaBus


def test_a_fetch_wait_is_at_least_one_ms() -> None:
    assert checked_fetch_wait(1) == 1
    assert fetch_wait_arg("2") == 2
    with pytest.raises(ValueError, match="at least 1"):
        checked_fetch_wait(0)
    for bad in ("0", "-5", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            fetch_wait_arg(bad)
    with pytest.raises(ValueError, match="at least 1"):
        KafkaBus("127.0.0.1:1", ["a"], fetch_wait_ms=0)
    assert linger_arg("0") == 0 and linger_arg("2") == 2 and checked_linger(0) == 0
    with pytest.raises(ValueError, match="at least 0"):
        checked_linger(-1)
    for bad in ("-1", "1.9"):  # (the clients count whole ms)
        with pytest.raises(argparse.ArgumentTypeError):
            linger_arg(bad)
    assert KafkaBus("127.0.0.1:1", ["a"], fetch_wait_ms=2).fetch_wait_ms == 2
    # and bounded above: below the clients' request timeout; a linger holds every output
    assert checked_fetch_wait(FETCH_WAIT_MAX_MS) == FETCH_WAIT_MAX_MS
    with pytest.raises(ValueError, match="at most"):
        checked_fetch_wait(FETCH_WAIT_MAX_MS + 1)
    assert checked_linger(LINGER_MAX_MS) == LINGER_MAX_MS
    with pytest.raises(ValueError, match="at most"):
        checked_linger(LINGER_MAX_MS + 1)
    with pytest.raises(argparse.ArgumentTypeError):
        fetch_wait_arg(str(10**9))


@pytest.mark.parametrize("module,flag", [("streams.ledger", "--fetch-wait-ms"),
                                         ("ecovisor.api.main", "--notify-fetch-wait-ms"),
                                         ("actuators.containers", "--fetch-wait-ms")])
def test_the_services_refuse_a_zero_fetch_wait_on_the_command_line(
        module: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main([flag, "0"])
    assert e.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_the_consumers_refuse_a_zero_fetch_wait_before_connecting() -> None:
    """The rule is checked where the adapters make a consumer (the actuators' and the
    API's), before any connection: no broker answers at 127.0.0.1:1."""
    import asyncio

    with pytest.raises(ValueError, match="at least 1"):
        assigned_consumer("127.0.0.1:1", "t", "c", fetch_max_wait_ms=0)
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(kafka_async.assigned_consumer("127.0.0.1:1", ["t"], fetch_max_wait_ms=0))


def test_a_ledger_app_refuses_a_negative_linger() -> None:
    from ecovisor.contract.config_file import load_config
    from streams.ledger_app import build_app

    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml")
    with pytest.raises(ValueError, match="at least 0"):
        build_app(cfg, bootstrap="127.0.0.1:1", linger_ms=-1)
    with pytest.raises(ValueError, match="at least 1"):
        build_app(cfg, bootstrap="127.0.0.1:1", fetch_wait_ms=0)

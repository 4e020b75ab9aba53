"""The consumers' fetch wait (``--fetch-wait-ms`` of the ledger, ``--notify-fetch-wait-ms``
of the API; the pipeline replay sets 2 ms): at least 1 ms, since the embedded broker
answers a fetch without wait with no records (docs/replay-pipeline.md, Speed)."""

from __future__ import annotations

import argparse

import pytest

from ecovisor.adapters.kafka import checked_fetch_wait, fetch_wait_arg, linger_arg
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
    assert linger_arg("0") == 0 and linger_arg("2") == 2
    for bad in ("-1", "1.9"):  # (the clients count whole ms)
        with pytest.raises(argparse.ArgumentTypeError):
            linger_arg(bad)
    assert KafkaBus("127.0.0.1:1", ["a"], fetch_wait_ms=2).fetch_wait_ms == 2


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

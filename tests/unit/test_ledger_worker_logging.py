"""The ledger's Faust worker keeps the root logger at its log level: Faust's terminal
spinner would set it to DEBUG for the whole run (streams/ledger.py ``worker_for``)."""

from __future__ import annotations

import logging

import faust

from streams.ledger import worker_for


def test_the_worker_leaves_the_logger_at_its_level() -> None:
    app = faust.App("ecovisor-test-logging", broker="kafka://127.0.0.1:1")
    logger = logging.getLogger("ecovisor.test.worker-logging")  # not the root: no side effects
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.WARNING)
    worker_for(app, "warning").on_setup_root_logger(logger, logging.WARNING)
    assert logger.level == logging.WARNING
    assert not logger.isEnabledFor(logging.DEBUG)
    # what Faust's own worker does (the reason for worker_for)
    faust.Worker(app, loglevel="warning", quiet=True).on_setup_root_logger(logger, logging.WARNING)
    assert logger.isEnabledFor(logging.DEBUG)

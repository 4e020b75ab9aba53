"""Replay and evaluate: run the policies of ``policies/`` over weeks of real traces in
seconds, accounted by the ledger's own state machine (``streams.ledger_worker``). The
top layer of the project (it drives the services' pure parts in-process); the
``ecovisor replay`` / ``ecovisor evaluate`` commands load it by module name.
docs/evaluation.md."""

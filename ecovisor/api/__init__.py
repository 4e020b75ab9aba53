"""The application-facing REST API (FastAPI): per-app bearer tokens, getters, setters,
interval queries and a notification stream. Run: ``python -m ecovisor.api``.

Modules: ``app`` (``create_app``), ``auth`` (tokens, isolation), ``readings`` (getters),
``commands`` (setters), ``stream`` (server-sent events), ``models`` (bodies and answers),
``state_source`` (the ledger's live views), ``command_bus`` (Kafka), ``wiring`` (what an
instance serves from), ``main`` (the entry).
"""

from ecovisor.api.app import create_app

__all__ = ["create_app"]

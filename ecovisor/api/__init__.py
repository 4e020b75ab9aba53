"""The application-facing REST API (FastAPI): per-app bearer tokens, getters, setters,
interval queries and a notification stream. Run: ``python -m ecovisor.api``."""

# One image for every Ecovisor service (bridge, ledger, history, collectors, actuators,
# API, policies); docker-compose.yml picks the module with `python -m <module>`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ecovisor ./ecovisor
COPY collectors ./collectors
COPY streams ./streams
COPY actuators ./actuators
COPY policies ./policies
RUN pip install .
COPY examples ./examples
COPY deploy ./deploy
ENV ECOVISOR_CONFIG=/etc/ecovisor/site.yaml
CMD ["python", "-m", "ecovisor.cli", "--help"]

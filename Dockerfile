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
# the demo workloads run as unprivileged uids (actuators.cgexec drops root): the code must
# be readable by them whatever the umask of the checkout it was copied from
RUN chmod -R a+rX /app
ENV ECOVISOR_CONFIG=/etc/ecovisor/site.yaml
CMD ["python", "-m", "ecovisor.cli", "--help"]

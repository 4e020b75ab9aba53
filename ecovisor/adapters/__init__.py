"""Adapters to the outside world: Kafka (``kafka``), container backends (cgroup v1/v2,
processes, LXD: ``backends``). Depend on the contract and the core only."""

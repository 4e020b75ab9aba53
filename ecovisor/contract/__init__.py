"""The public contract: messages (the ``envelope`` and one module per kind: ``telemetry``,
``commands``, ``notifications``, ``actuation``, ``operator_messages``), Kafka topics and
MQTT topic names (``topics``) and the site configuration (``config``, with its sections in
``site_config`` and ``app_config``, read by ``config_file``, overridden by
``environment``). Depends on ``ecovisor.core`` only."""

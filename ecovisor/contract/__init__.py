"""The public contract: messages (``schemas``), Kafka topics and MQTT topic names
(``topics``) and the site configuration (``config``). Depends on ``ecovisor.core`` only."""

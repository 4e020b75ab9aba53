#!/bin/sh
# The `mqtt-setup` one-shot of docker-compose.yml: runs in the ecovisor image, as root,
# before mosquitto and Prometheus start (and again on every `docker compose up`).
#
#   sh mqtt-setup.sh MQTT_DIR PROMETHEUS_DIR
#
# MQTT_DIR: mosquitto.passwd (PBKDF2 hashes) and mosquitto.acl of the site's MQTT
#   principals, from `ecovisor config mqtt-auth` (passwords: an app's token, a device's
#   configured credential, else derived from the internal key). mosquitto 2 opens them
#   after dropping root to its `mosquitto` user, uid 1883 in the eclipse-mosquitto image.
# PROMETHEUS_DIR: ledger.token, the internal key, which Prometheus (user nobody, uid
#   65534 in the prom/prometheus image) sends as bearer token to the ledger's /metrics.
# Both files are mode 0600. Needs $ECOVISOR_INTERNAL_KEY and $ECOVISOR_CONFIG.
set -eu
mqtt_dir=$1
prometheus_dir=$2
: "${ECOVISOR_INTERNAL_KEY:?is not set}"

python -m ecovisor.cli config mqtt-auth --out "$mqtt_dir"
chown 1883:1883 "$mqtt_dir/mosquitto.passwd" "$mqtt_dir/mosquitto.acl"

umask 077
printf '%s\n' "$ECOVISOR_INTERNAL_KEY" > "$prometheus_dir/ledger.token.tmp"
chown 65534:65534 "$prometheus_dir/ledger.token.tmp"
mv "$prometheus_dir/ledger.token.tmp" "$prometheus_dir/ledger.token"

#!/usr/bin/env bash
# Installs the system packages the embedded stack uses, where we can (root + apt).
#   mosquitto        MQTT broker (otherwise the pip-installed amqtt broker is used)
#   victoria-metrics time-series store accepting influxdb-client writes (optional)
#   docker-compose   validates docker-compose.yml without an engine (tests)
#   chromium         the headless browser of the dashboard's browser test (playwright)
set -u
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || need+=(victoria-metrics)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ -x /usr/bin/chromium ] || need+=(chromium)
# Workloads run under their app's own unprivileged uid (actuators/cgexec.py, docs/
# reliability.md#tenant-workloads), so the project's interpreter must be reachable by
# others. Python installed under /root (pyenv) sits behind /root's mode 700: let others
# traverse (o+x: they can open a path they know, not list the directory).
if [ "$(id -u)" = 0 ] && [ -x .venv/bin/python ]; then
  # the venv's own path (what the launcher runs) and the interpreter it links to
  for d in "$(pwd)/.venv/bin" "$(dirname "$(readlink -f .venv/bin/python)")"; do
    while [ "$d" != / ]; do
      if [ -z "$(find "$d" -maxdepth 0 -perm -o+x)" ]; then
        echo "workloads run as their app's uid: chmod o+x $d (traverse only)" >&2
        chmod o+x "$d"
      fi
      d=$(dirname "$d")
    done
  done
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
    || echo "warning: apt-get install ${need[*]} failed; falling back where possible" >&2
  # Debian starts the packaged daemons; Ecovisor runs its own instances.
  for s in mosquitto victoria-metrics; do
    (systemctl stop "$s" || service "$s" stop) >/dev/null 2>&1 || true
  done
else
  echo "note: not root or no apt-get; missing optional system packages: ${need[*]}" >&2
fi
exit 0

"""``python -m ecovisor.api --config FILE``: the REST API on uvicorn
(127.0.0.1:stack.api_port), reading the ledger's loopback state views and Kafka."""

import argparse
import json
import sys
from collections.abc import Callable

from ecovisor.adapters.kafka import fetch_wait_arg
from ecovisor.api.app import create_app, openapi_document
from ecovisor.api.command_bus import NOTIFY_FETCH_WAIT_MS, KafkaBus
from ecovisor.api.state_source import HttpStateSource
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line
from ecovisor.contract.environment import internal_key, kafka_bootstrap


def main(argv: list[str] | None = None, serve: Callable[..., None] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m ecovisor.api", description="The Ecovisor application REST API."
    )
    p.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="default stack.api_port")
    p.add_argument("--ledger-url", help="ledger state views (default loopback ledger_web_port)")
    p.add_argument("--notify-fetch-wait-ms", type=fetch_wait_arg, default=NOTIFY_FETCH_WAIT_MS,
                   help="longest wait of the notification consumer's fetches, ms (default "
                   "%(default)s): the embedded broker holds a fetch that long even when a "
                   "notification arrives; shorter: lower latency, more empty fetches when idle")
    p.add_argument("--dump-openapi", metavar="PATH", help="write the OpenAPI JSON and exit")
    a = p.parse_args(argv)
    if a.dump_openapi:
        doc = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
        if a.dump_openapi == "-":
            sys.stdout.write(doc)
        else:
            with open(a.dump_openapi, "w") as fh:
                fh.write(doc)
        return
    try:
        cfg = load_config(config_path(a.config))
    except ConfigError as e:
        print(f"ecovisor.api: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    ledger_url = a.ledger_url or f"http://127.0.0.1:{cfg.stack.ledger_web_port}"
    bus = KafkaBus(kafka_bootstrap(cfg), [x.id for x in cfg.apps],
                   fetch_wait_ms=a.notify_fetch_wait_ms)
    api = create_app(cfg, HttpStateSource(ledger_url, key=internal_key(cfg)), bus)
    port = a.port or cfg.stack.api_port
    if serve is None:
        import uvicorn

        # uvicorn handles SIGTERM/SIGINT: stops accepting, runs the lifespan shutdown
        uvicorn.run(api, host=a.host, port=port, log_level="info")
    else:
        serve(api, host=a.host, port=port)


if __name__ == "__main__":
    main()

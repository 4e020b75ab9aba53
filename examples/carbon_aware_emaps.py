"""A carbon-aware job gate written for the Electricity Maps API v3, nothing Ecovisor in it:
it asks for the latest carbon intensity of a zone and runs (exit 0) below a threshold or
defers (exit 1) above it.

Against Electricity Maps:  ELECTRICITYMAPS_TOKEN=<key> python carbon_aware_emaps.py --zone DE
Under Ecovisor, only the base URL changes (docs/emulation.md):

    ELECTRICITYMAPS_API_URL=http://127.0.0.1:18080/v1/apps/web/emulate/electricitymaps \\
    ELECTRICITYMAPS_TOKEN=<the app's token> python examples/carbon_aware_emaps.py --zone DE
"""

import argparse
import json
import os
import sys
import urllib.parse
import urllib.request

BASE = os.environ.get("ELECTRICITYMAPS_API_URL", "https://api.electricitymaps.com")


def latest_intensity(zone: str, token: str) -> dict:
    query = urllib.parse.urlencode({"zone": zone})
    req = urllib.request.Request(
        f"{BASE}/v3/carbon-intensity/latest?{query}", headers={"auth-token": token}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zone", required=True)
    ap.add_argument("--threshold", type=float, default=200.0, help="gCO2eq/kWh")
    args = ap.parse_args()
    now = latest_intensity(args.zone, os.environ["ELECTRICITYMAPS_TOKEN"])
    value = now["carbonIntensity"]
    print(f"{now['zone']}: {value:.0f} gCO2eq/kWh at {now['datetime']}"
          f"{' (estimated)' if now['isEstimated'] else ''}")  # fmt: skip
    if value > args.threshold:
        print(f"above {args.threshold:.0f}: defer the job")
        return 1
    print(f"at or below {args.threshold:.0f}: run the job now")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Carbon-agnostic baseline (paper §5.1.2, the reference every policy is compared with):
run everything at full speed regardless of carbon: containers resumed, no power caps.

    python -m policies.carbon_agnostic --app X [--api URL --token T | --config F]
"""

from __future__ import annotations

import argparse

from policies.base import Action, AppView, Observation, ResumeContainer, SetContainerPowercap, main


class CarbonAgnostic:
    name = "carbon_agnostic"

    def __init__(self) -> None:
        self.app: AppView | None = None

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        return []

    def decide(self, obs: Observation) -> list[Action]:
        out: list[Action] = []
        for c, cd in sorted(obs.data.containers.items()):
            if cd.suspended:
                out.append(ResumeContainer(c))
            if cd.powercap_w is not None:
                out.append(SetContainerPowercap(c, None))
        return out


def build(_: argparse.Namespace) -> CarbonAgnostic:
    return CarbonAgnostic()


if __name__ == "__main__":
    main("carbon_agnostic", build)

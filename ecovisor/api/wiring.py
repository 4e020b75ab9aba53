"""What one API instance serves from: the site configuration, the state source and the
command bus. ``create_app`` keeps them on ``app.state``; routes ask for them with the
``Ctx`` dependency, so the route modules need no closures."""

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ecovisor.api.command_bus import CommandBus
from ecovisor.api.state_source import StateSource
from ecovisor.contract.config import EcovisorConfig
from ecovisor.core.rate_limit import TokenBucket


@dataclass(frozen=True)
class Wiring:
    """The site configuration and the backends one API instance serves from."""

    cfg: EcovisorConfig
    state: StateSource
    bus: CommandBus
    # one bucket per configured app (bounded by the configuration)
    command_buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def command_wait_s(self, app: str) -> float:
        """Take one command of ``app`` from its bucket: 0.0, or the seconds until it may
        send one (``EcovisorConfig.command_rate``)."""
        bucket = self.command_buckets.get(app)
        if bucket is None:
            bucket = TokenBucket(*self.cfg.command_rate(app))
            self.command_buckets[app] = bucket
        return bucket.take(time.monotonic())


def wiring(request: Request) -> Wiring:
    return request.app.state.wiring  # set by create_app


Ctx = Annotated[Wiring, Depends(wiring)]

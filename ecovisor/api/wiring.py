"""What one API instance serves from: the site configuration, the state source and the
command bus. ``create_app`` keeps them on ``app.state``; routes ask for them with the
``Ctx`` dependency, so the route modules need no closures."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ecovisor.api.command_bus import CommandBus
from ecovisor.api.state_source import StateSource
from ecovisor.contract.config import EcovisorConfig


@dataclass(frozen=True)
class Wiring:
    """The site configuration and the backends one API instance serves from."""

    cfg: EcovisorConfig
    state: StateSource
    bus: CommandBus


def wiring(request: Request) -> Wiring:
    return request.app.state.wiring  # set by create_app


Ctx = Annotated[Wiring, Depends(wiring)]

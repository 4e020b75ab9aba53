"""Who is asking and what they may address (BRIEF "tenant isolation"): the bearer token
names exactly one application (``config.app_for_token``); that app, its containers (the
configured ones and its templates' replicas) and its templates are all it can address.
No or an unknown token gives 401; another app's name, container or template gives 403;
a name that exists nowhere in the site gives 404. The site operator's token
(``config.operator_token``) reads the whole site (``operator``, the ``/v1/site`` routes);
an app's token there is a 403."""

from typing import Annotated

from fastapi import Depends, HTTPException, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ecovisor.api.wiring import Ctx
from ecovisor.contract.app_config import AppConfig
from ecovisor.contract.config import EcovisorConfig

API_PREFIX = "/v1/apps/{app}"


_bearer = HTTPBearer(auto_error=False)
AppPath = Annotated[str, Path(description="application id (must be the token's app)")]


def authenticate(
    ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> AppConfig:
    """The token's application, or 401."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    found = ctx.cfg.app_for_token(creds.credentials)
    if found is None:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    return found


def this_app(app: AppPath, me: Annotated[AppConfig, Depends(authenticate)]) -> AppConfig:
    """The token's application if it is the one in the path, else 403."""
    if app != me.id:
        raise HTTPException(403, f"this token belongs to app {me.id!r}, not {app!r}")
    return me


Caller = Annotated[AppConfig, Depends(authenticate)]
Me = Annotated[AppConfig, Depends(this_app)]


def operator(
    ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The site operator (``config.operator_token``: every app, the site's sources, the
    command log), or 401 (no or an unknown token) / 403 (an app's token: it sees only
    its own app, under ``/v1/apps/{app}``)."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if ctx.cfg.is_operator_token(creds.credentials):
        return
    found = ctx.cfg.app_for_token(creds.credentials)
    if found is not None:
        raise HTTPException(403, f"this token belongs to app {found.id!r}, not to the operator")
    raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})


OPERATOR = Depends(operator)  # a route or router dependency: the operator only


def _in_site(cfg: EcovisorConfig, name: str) -> bool:
    return cfg.locate(name) is not None or any(t.id == name for a in cfg.apps for t in a.templates)


def own_container(cfg: EcovisorConfig, me: AppConfig, container: str) -> str:
    """``container`` if ``me`` owns it by the site's one ownership table
    (``EcovisorConfig.locate``: configured containers and template replicas, the rule
    the ledger validates commands with), else 403 (it exists elsewhere) or 404."""
    place = cfg.locate(container)
    if place is not None and place.app == me.id:
        return container
    if _in_site(cfg, container):
        raise HTTPException(403, f"container {container!r} is not a container of {me.id!r}")
    raise HTTPException(404, f"app {me.id!r} has no container {container!r}")


def own_template(cfg: EcovisorConfig, me: AppConfig, template: str) -> str:
    """``template`` if it is one of ``me``'s container templates, else 403 or 404."""
    if any(t.id == template for t in me.templates):
        return template
    if _in_site(cfg, template):
        raise HTTPException(403, f"template {template!r} is not a template of {me.id!r}")
    raise HTTPException(404, f"app {me.id!r} has no container template {template!r}")

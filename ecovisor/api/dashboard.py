"""The live web dashboard (docs/dashboard.md): ``GET /dashboard`` serves a small static
page (``dashboard_static/``: HTML, JS, CSS and the vendored uPlot, no build step) that
reads the API with the token typed into it: the operator's ``/v1/site`` routes
(``dashboard_site``) or one app's ``/v1/apps/{app}`` routes. The page holds no data and
no secret: the token stays in the browser's sessionStorage and goes out only as the
``Authorization`` header, so the page itself needs none."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "dashboard_static"
# the page's own files only: no inline script, no other origin, not framed
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


async def to_page() -> RedirectResponse:
    return RedirectResponse("/dashboard/")


def mount(api: FastAPI) -> None:
    """``/dashboard/`` (the page) and ``/dashboard/static/...`` (its files); not in the
    OpenAPI document (they are not API routes)."""
    api.add_api_route("/dashboard", to_page, methods=["GET"], include_in_schema=False)
    api.add_api_route("/dashboard/", page, methods=["GET"], include_in_schema=False)
    api.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")

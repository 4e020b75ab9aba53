"""One shape for every 422 the API answers: FastAPI's documented ``HTTPValidationError``
(``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``), whether the body failed
the contract, a route's own check (t2 ≤ t1, a site limit), the body size (``BodyLimit``)
or the body could not be read as JSON at all (not UTF-8: FastAPI's own 400, answered
as this 422 by ``unreadable_body_handler``). Items carry no echo of the input: a
non-finite number (``Infinity``) would make the error itself unserialisable, and a large
body is not worth sending back.

The other refusals (401, 403, 404, 429, 503) are ``{"detail": "<reason>"}`` (``ErrorDetail``);
``error_responses`` documents them on each route that can answer them, so the OpenAPI
document lists every status code a route answers (checked by reliability/fuzz_rest.py)."""

from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ErrorDetail(BaseModel):
    """A refusal other than a 422: why, in one line."""

    detail: str


_REASONS = {
    401: "no bearer token, or not the token of any application",
    403: "the token's application may not address this application, container or template",
    404: "the token's application has no such container or container template",
    429: "the app sent commands faster than its rate (site.limits.max_commands_per_s, "
    "default from its size, after command_burst at once): retry after Retry-After s",
    503: "the ledger's state or the command bus is not available (the reason says which)",
}


VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"  # FastAPI's 422 body


def validation_response(description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of a 422 a route answers without parameters of its own to
    validate (the one shape, ``HTTPValidationError``)."""
    schema = {"schema": {"$ref": VALIDATION_ERROR_REF}}
    return {422: {"description": description, "content": {"application/json": schema}}}


TOO_LARGE = validation_response("a request body larger than site.limits.max_message_bytes")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the refusals ``codes`` a route answers (``ErrorDetail``)."""
    return {c: {"model": ErrorDetail, "description": _REASONS[c]} for c in codes}


def error_item(loc: Sequence[str | int], msg: str, typ: str = "value_error") -> dict[str, Any]:
    return {"loc": [x if isinstance(x, int) else str(x) for x in loc], "msg": msg, "type": typ}


def items(errors: Iterable[Any], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """pydantic / FastAPI error dicts as documented items (loc, msg, type only)."""
    return [
        error_item([*prefix, *e.get("loc", ())], str(e.get("msg", "")), str(e.get("type", "")))
        for e in errors
    ]


def unprocessable(loc: Sequence[str | int], msg: str) -> HTTPException:
    """A 422 with one documented error item (raise it)."""
    return HTTPException(422, [error_item(loc, msg)])


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": items(errors)})


async def unreadable_body_handler(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 400 "There was an error parsing the body" (a JSON body that is not
    UTF-8; the API raises no 400 of its own) as a 422 of the one shape."""
    item = error_item(["body"], "JSON decode error: the body is not UTF-8", "json_invalid")
    return JSONResponse(status_code=422, content={"detail": [item]})


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` (the site's
    ``limits.max_message_bytes``, as for telemetry) is a 422 before it is read whole:
    at once for a declared ``Content-Length``, else as soon as the chunks pass it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _error(self, size: str) -> dict[str, Any]:
        limit = f"site.limits.max_message_bytes ({self.max_bytes})"
        msg = f"body of {size} bytes is larger than {limit}"
        return {"detail": [error_item(["body"], msg)]}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(self._error(declared.decode()), status_code=422)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # raised inside the route: its 422 handler answers
                    raise HTTPException(422, self._error(f"more than {self.max_bytes}")["detail"])
            return message

        await self.app(scope, limited, send)

"""The central's errors as problem+json responses (coupons.problem), and its exception handlers."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from coupons.problem import MEDIA_TYPE, Problem
from sync import protocol
from sync.central.ingest import BatchInvalid


class ProblemError(Exception):
    """Raised by a route to answer with a problem (the handler adds the request's path)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def problem_body(status: int, code: str, detail: str, instance: str | None = None) -> bytes:
    return json.dumps(Problem(status, code, detail, instance=instance).to_dict()).encode()


def problem(
    status: int, code: str, detail: str, instance: str | None = None, **headers: str
) -> Response:
    return Response(
        problem_body(status, code, detail, instance),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers or None,
    )


async def _auth(request: Request, exc: protocol.AuthError) -> Response:
    code = "forbidden" if exc.status == 403 else "unauthorized"
    return problem(exc.status, code, exc.detail, request.url.path)


async def _problem(request: Request, exc: ProblemError) -> Response:
    extra = {"WWW-Authenticate": "Bearer"} if exc.code == "admin-token" else {}
    return problem(exc.status, exc.code, exc.detail, request.url.path, **extra)


async def _batch(request: Request, exc: BatchInvalid) -> Response:
    return problem(exc.status, exc.code, exc.detail, request.url.path)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    # Every bad query, path or header is a 400 here (never FastAPI's 422): the OpenAPI
    # document says so too (openapi_doc.honest_errors).
    errors = exc.errors()
    where = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else ""
    msg = errors[0].get("msg", "invalid") if errors else "invalid"
    return problem(400, "bad-request", f"{where}: {msg}", request.url.path)


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
    return problem(exc.status_code, code, str(exc.detail), request.url.path)


def install(app: FastAPI) -> None:
    """Answer every error the central knows with a problem (a Guard answers the rest)."""
    app.exception_handler(protocol.AuthError)(_auth)
    app.exception_handler(ProblemError)(_problem)
    app.exception_handler(BatchInvalid)(_batch)
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(StarletteHTTPException)(_http)


__all__ = ["ProblemError", "install", "problem", "problem_body"]

"""The central's routers alone: each route reaches its Services through one FastAPI
dependency, so a test can give it a stand-in without a database, keys or a server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee as pw
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from sync import protocol
from sync.central import admin_api, problems, terminal_api, terminals
from sync.central.context import services
from sync.central.problems import ProblemError


class StandIn:
    """What a route uses of Services: db() answers from a table of canned results (or
    fails as a database that does not answer), the admin check passes or refuses."""

    def __init__(
        self,
        answers: dict[Callable[..., Any], Any],
        admin: bool = True,
        down: Exception | None = None,
    ) -> None:
        self.answers, self.admin, self.down = answers, admin, down
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.admin_checks = 0
        self.central = object()

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls.append((fn, args))
        if self.down is not None:
            raise self.down  # the database does not answer
        return self.answers[fn]

    async def require(self, request: Request, permission: str) -> terminals.Caller:
        self.admin_checks += 1
        if not self.admin:
            raise ProblemError(401, "admin-token", "a valid admin bearer token is required")
        return terminals.Caller("token:tests", "admin")


def _client(router: Any, stand_in: StandIn) -> TestClient:
    app = FastAPI()
    problems.install(app)
    app.include_router(router)
    app.dependency_overrides[services] = lambda: stand_in
    return TestClient(app)


def test_an_admin_route_alone() -> None:
    svc = StandIn({terminals.list_terminals: [{"terminal": "t1"}]})
    r = _client(admin_api.router, svc).get(f"{protocol.ADMIN_PREFIX}/terminals")
    assert r.status_code == 200 and r.json() == {"terminals": [{"terminal": "t1"}]}
    assert svc.calls == [(terminals.list_terminals, (svc.central,))]


def test_an_admin_route_without_a_token_is_a_problem_with_a_challenge() -> None:
    svc = StandIn({}, admin=False)
    r = _client(admin_api.router, svc).get(f"{protocol.ADMIN_PREFIX}/report")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer" and r.json()["code"] == "admin-token"
    assert r.json()["instance"] == f"{protocol.ADMIN_PREFIX}/report" and not svc.calls


def test_a_bad_query_is_a_400_before_the_token_is_looked_at() -> None:
    svc = StandIn({}, admin=False)
    r = _client(admin_api.router, svc).get(f"{protocol.ADMIN_PREFIX}/flags?limit=0")
    assert r.status_code == 400 and r.json()["code"] == "bad-request"
    assert svc.admin_checks == 0


def test_the_readiness_probe_alone() -> None:
    svc = StandIn({}, down=pw.OperationalError("no route to host"))
    r = _client(terminal_api.router, svc).get("/healthz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["code"] == "not-ready" and doc["ok"] is False and doc["version"] == 0
    assert doc["problems"] == ["the database does not answer: no route to host"]
    assert doc["instance"] == "/healthz" and doc["title"] == "Service unavailable"

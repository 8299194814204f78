"""What a central route reaches, as a FastAPI dependency: the services, the database, the caller."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from sync.central import terminals, users
from sync.central.delivery import Delivery
from sync.central.models import TerminalRow
from sync.central.online import Online
from sync.central.problems import ProblemError
from sync.central.publisher import Publisher
from sync.central.store import Central

READ_PERMISSIONS = frozenset({"read", "audit.read"})
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    """The objects one app serves from; create_app keeps them on app.state.services."""

    central: Central
    delivery: Delivery
    online: Online
    publisher: Publisher | None = None

    @classmethod
    def over(cls, central: Central, publisher: Publisher | None = None) -> Services:
        return cls(central, Delivery(central), Online(central), publisher)

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn in a worker thread with a database connection: peewee blocks, and a
        connection belongs to one request (several instances share one database)."""

        def work() -> T:
            with self.central.session():
                return fn(*args, **kwargs)

        return await run_in_threadpool(work)

    async def signed(self, request: Request) -> tuple[TerminalRow, bytes]:
        """The terminal that signed this request, and the body its signature covers.
        Called in the route, not as a dependency, so that a bad query is a 400 before the
        signature is looked at (FastAPI runs dependencies before it checks parameters)."""
        body = await request.body()
        row = await self.db(
            terminals.authenticate,
            self.central,
            request.headers,
            request.method,
            path_qs(request),
            body,
        )
        return row, body

    async def require(self, request: Request, permission: str) -> terminals.Caller:
        """The caller of an admin route, whose token's role holds `permission` (called in
        the route, for the same reason as `signed`): 401 without a valid admin bearer
        token, 403 naming the permission when its role lacks it."""
        caller = await self.db(terminals.admin_caller, request.headers.get("authorization"))
        if caller is None:
            raise ProblemError(401, "admin-token", "a valid admin bearer token is required")
        if not users.allowed(caller.role, permission):
            if permission not in READ_PERMISSIONS:  # an attempted change: on the record
                where = f"{request.method} {request.url.path}"
                refused = {"permission": permission, "role": caller.role}
                actor = caller.actor
                await self.db(users.audit, self.central, actor, "refused", where, None, refused)
            raise ProblemError(
                403,
                "permission",
                f"this token's role ({caller.role}) lacks the permission {permission}",
            )
        return caller


def services(request: Request) -> Services:
    found = request.app.state.services
    if not isinstance(found, Services):
        raise TypeError("the app was not made by sync.central.app.create_app")
    return found


# A route's parameter of this type receives the app's Services (a test may override
# `services` in app.dependency_overrides to give a route its own).
Svc = Annotated[Services, Depends(services)]


def path_qs(request: Request) -> str:
    """The path and query exactly as sent: what the terminal signed."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    path = raw.decode("latin-1")
    return f"{path}?{query.decode('latin-1')}" if query else path


def json_object(body: bytes) -> dict[str, object]:
    """A request body that must be a JSON object, or a 400 problem."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ProblemError(400, "malformed-json", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProblemError(400, "bad-request", "the body must be a JSON object")
    return doc


__all__ = ["Services", "Svc", "json_object", "path_qs", "services"]

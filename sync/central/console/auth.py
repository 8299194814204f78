"""Logging in and out of the console: /login (name and password, users.verify_login with
its lock-out) and /logout."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from sync.central import users
from sync.central.console import pages, session
from sync.central.context import services
from sync.central.store import Central

router = APIRouter(include_in_schema=False)

REFUSALS = {
    "bad-credentials": pages.BAD_CREDENTIALS,
    "locked": pages.LOCKED,
    "disabled": pages.DISABLED,
}


async def _form(request: Request, status: int, error: str | None, name: str = "") -> Response:
    token, cookie = await session.login_token(request)
    resp = await pages.render(
        request, "login.html", None, status, csrf_token=token, error=error, name=name
    )
    if cookie is not None:
        resp.set_cookie(session.LOGIN_COOKIE, cookie, httponly=True, samesite="strict")
    return resp


@router.get("/login")
async def login_page(request: Request) -> Response:
    viewer, expired = await session.read(request)
    if viewer is not None:
        return RedirectResponse("/", status_code=303)
    expired = expired or request.query_params.get("expired") == "1"
    return await _form(request, 200, pages.SESSION_EXPIRED if expired else None)


def _login(central: Central, name: str, password: str) -> users.UserDoc:
    user = users.verify_login(central, name, password, central.now())
    users.audit(central, f"user:{name}", "console.login", f"user:{name}")
    return user


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    if not await session.login_token_ok(request, form.get(session.CSRF_FIELD)):
        return await _form(request, 403, pages.CSRF_REFUSED)
    name, password = form.get("name"), form.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        return await _form(request, 400, pages.BAD_CREDENTIALS)
    svc = services(request)
    try:
        user = await svc.db(_login, svc.central, name.strip(), password)
    except users.LoginRefused as exc:
        return await _form(request, 401, REFUSALS.get(exc.reason, pages.BAD_CREDENTIALS), name)
    resp = RedirectResponse("/", status_code=303)
    await session.start(request, resp, session.new_viewer(user["name"], user["role"]))
    resp.delete_cookie(session.LOGIN_COOKIE)
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    viewer, _ = await session.read(request)
    form = await request.form()
    if viewer is not None and not session.csrf_ok(viewer, form.get(session.CSRF_FIELD)):
        return await pages.message(request, viewer, 403, pages.CSRF_REFUSED, "csrf-token")
    if viewer is not None:  # every session of the user ends, copies of the cookie too
        svc = services(request)
        await svc.db(users.end_sessions, viewer.name)
    resp = RedirectResponse("/login", status_code=303)
    session.end(resp)
    return resp

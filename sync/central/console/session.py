"""Console sessions: a signed cookie naming the user, its CSRF token and when it was last
used (by the central's clock), with a signing key every instance reads from the database."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeSerializer

from sync.central.context import services
from sync.central.models import Setting, UserRow
from sync.central.store import Central

COOKIE = "console_session"
LOGIN_COOKIE = "console_login"  # the login form's CSRF token, before there is a session
CSRF_FIELD = "csrftoken"
IDLE_S = 30 * 60  # a session unused this long (central's clock) must log in again
# The cookie signing key, sealed under the master key as the signing keys are (a copy of
# the database alone cannot forge a session). A plain key an older release stored under
# PLAIN_SECRET_SETTING is dropped: sessions signed with it log in again.
SECRET_SETTING = "console.session_secret.sealed"
PLAIN_SECRET_SETTING = "console.session_secret"
SECRET_KID, SECRET_PURPOSE = "console-session", "cookie-signing"
# A cookie stamped this far ahead of the central's clock was not made by it (or the clock
# went back): refused rather than trusted for the skew plus the idle time.
AHEAD_S = 60


@dataclass(frozen=True)
class Viewer:
    """The person a console request is from."""

    name: str
    role: str
    csrf: str

    @property
    def actor(self) -> str:
        return f"user:{self.name}"


def _secret(central: Central) -> str:
    # Whichever instance comes first writes the key; every other one reads that one, so a
    # cookie made by one instance is accepted by all of them.
    vault = central.vault
    with central.session():
        Setting.delete().where(Setting.key == PLAIN_SECRET_SETTING).execute()
        sealed = vault.seal(SECRET_KID, SECRET_PURPOSE, secrets.token_bytes(48))
        Setting.insert(key=SECRET_SETTING, value=sealed.hex()).on_conflict_ignore().execute()
        stored = bytes.fromhex(str(Setting.get(Setting.key == SECRET_SETTING).value))
    return vault.open(SECRET_KID, SECRET_PURPOSE, stored).hex()


async def serializer(request: Request, salt: str) -> URLSafeSerializer:
    state = request.app.state
    cached = getattr(state, "console_secret", None)
    secret: str
    if isinstance(cached, str):
        secret = cached
    else:
        svc = services(request)
        secret = await svc.db(_secret, svc.central)
        state.console_secret = secret
    return URLSafeSerializer(secret, salt=salt)


def _user(name: str) -> UserRow | None:
    row: UserRow | None = UserRow.get_or_none(UserRow.name == name)
    return None if row is None or row.disabled else row


async def read(request: Request) -> tuple[Viewer | None, bool]:
    """The viewer of a request and whether a session cookie was there but expired."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None, False
    try:
        data = (await serializer(request, "session")).loads(raw)
    except BadSignature:
        return None, False
    if not isinstance(data, dict):
        return None, False
    name, csrf, seen, epoch = data.get("u"), data.get("c"), data.get("t"), data.get("e")
    if not (isinstance(name, str) and isinstance(csrf, str) and isinstance(seen, int)):
        return None, False
    svc = services(request)
    now = int(svc.central.now())
    if now - seen > IDLE_S or seen > now + AHEAD_S:
        return None, True
    row = await svc.db(_user, name)
    if row is None or epoch != row.session_epoch:
        # Disabled, logged out, or its password reset since this session began: out at once.
        return None, False
    return Viewer(name, str(row.role), csrf), False


async def start(request: Request, response: Response, viewer: Viewer) -> None:
    """Set (or refresh: the idle time counts from the last request) the session cookie."""
    svc = services(request)
    now = int(svc.central.now())
    row = await svc.db(_user, viewer.name)
    epoch = int(row.session_epoch) if row is not None else -1  # -1: never valid
    doc = {"u": viewer.name, "c": viewer.csrf, "t": now, "e": epoch}
    value = (await serializer(request, "session")).dumps(doc)
    response.set_cookie(COOKIE, value, httponly=True, samesite="strict", path="/")


def end(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def new_viewer(name: str, role: str) -> Viewer:
    return Viewer(name, role, secrets.token_urlsafe(24))


async def login_token(request: Request) -> tuple[str, str | None]:
    """The login form's CSRF token and, when it is new, the cookie value to set."""
    ser = await serializer(request, "login")
    raw = request.cookies.get(LOGIN_COOKIE)
    if raw:
        try:
            token = ser.loads(raw)
            if isinstance(token, str):
                return token, None
        except BadSignature:
            pass
    token = secrets.token_urlsafe(24)
    return token, ser.dumps(token)


async def login_token_ok(request: Request, sent: object) -> bool:
    raw = request.cookies.get(LOGIN_COOKIE)
    if not raw or not isinstance(sent, str) or not sent:
        return False
    try:
        token = (await serializer(request, "login")).loads(raw)
    except BadSignature:
        return False
    return isinstance(token, str) and secrets.compare_digest(token, sent)


def csrf_ok(viewer: Viewer, sent: object) -> bool:
    return isinstance(sent, str) and bool(sent) and secrets.compare_digest(viewer.csrf, sent)

"""Workbench sign-in: an API key is exchanged for a signed, expiring, HttpOnly, SameSite=Lax session cookie
(``itsdangerous``), and every ``/ui`` request is authenticated from that cookie into the same ``Principal`` the
bearer API uses (so ``server.auth.require_role`` guards work unchanged). CSRF is Litestar's double-submit
``CSRFConfig`` on ``/ui`` only; the bearer API (``/v1``) is untouched.

Cookie ``pm_session`` = signed ``{"n": key name, "r": role, "p": key prefix, "k": key id}``. On every request the key must
still be active (``KeyStore.list``): revoking a key ends its sessions at once.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeTimedSerializer
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Receive, Scope, Send

from pubmind.durable import write_atomic
from pubmind.errors import NotFound
from pubmind.settings import Settings
from server.auth import ANONYMOUS, KeyStore, Principal
from server.ratelimit import RateLimiter

SESSION_COOKIE = "pm_session"
CSRF_COOKIE = "pm_csrf"
CSRF_HEADER = "x-csrftoken"
UI_PREFIX = "/ui"
# Paths under /ui reachable without a session (the sign-in page and the static assets).
PUBLIC = ("/ui/login", "/ui/static/")


def ui_secret(settings: Settings) -> str:
    """The workbench's signing secret: ``HOME/ui_secret`` (created once, mode 0600), so sessions survive a
    restart and every worker process signs alike."""
    path = Path(settings.home) / "ui_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            tmp.write_text(secrets.token_urlsafe(48))
            os.chmod(tmp, 0o600)

        write_atomic(path, write)
    return path.read_text().strip()


def csrf_config(settings: Settings) -> CSRFConfig:
    """Double-submit CSRF on the workbench only: a form or htmx request must carry the token of the signed
    ``pm_csrf`` cookie (form field ``_csrf_token`` or header ``x-csrftoken``)."""
    return CSRFConfig(secret=ui_secret(settings), cookie_name=CSRF_COOKIE, header_name=CSRF_HEADER,
                      cookie_httponly=True, cookie_samesite="strict", cookie_secure=settings.server.ui_secure_cookies,
                      exclude=[r"^/(?!ui(/|$))."])  # every path but /ui, /ui/...


class Sessions:
    """Signs and reads session cookies."""

    def __init__(self, settings: Settings) -> None:
        self.max_age = int(settings.server.ui_session_hours * 3600)
        self.secure = settings.server.ui_secure_cookies
        self._s = URLSafeTimedSerializer(ui_secret(settings), salt="pubmind-ui-session")

    def cookie(self, principal: Principal, prefix: str) -> Cookie:
        value = self._s.dumps({"n": principal.name, "r": principal.role, "p": prefix, "k": principal.key_id})
        return Cookie(key=SESSION_COOKIE, value=value, path="/", max_age=self.max_age, httponly=True,
                      samesite="lax", secure=self.secure)

    def clear(self) -> Cookie:
        return Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True, samesite="lax",
                      secure=self.secure)

    def read(self, value: str) -> dict[str, str] | None:
        """The signed payload, or None when the cookie is forged, altered or older than the session lifetime."""
        try:
            data = self._s.loads(value, max_age=self.max_age)
        except BadSignature:  # SignatureExpired is a BadSignature
            return None
        return data if isinstance(data, dict) else None


def principal_from_session(data: dict[str, str] | None, keys: KeyStore | None) -> Principal | None:
    """The session's principal if its key is still active with the same role (None otherwise)."""
    if keys is None:
        return ANONYMOUS
    if data is None:
        return None
    for k in keys.list():
        if k.name == data.get("n") and k.prefix == data.get("p") and k.role == data.get("r"):
            try:
                key_id = keys.key_id(k.name)
            except NotFound:  # revoked just now
                return None
            return Principal(k.name, k.role, key_id=key_id) if key_id == data.get("k") else None
    return None


class SessionMiddleware:
    """Authenticates ``/ui`` requests from the session cookie; without one a page request is redirected to the
    sign-in page and an htmx request gets 401 with ``HX-Redirect``. Applies the same per-key rate limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(PUBLIC):
            await self.app(scope, receive, send)
            return
        conn: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive)
        state = conn.app.state
        sessions: Sessions = state["ui_sessions"]
        raw = conn.cookies.get(SESSION_COOKIE)
        principal = principal_from_session(sessions.read(raw) if raw else None, state["key_store"])
        if principal is None:
            target = f"{UI_PREFIX}/login?next={quote(path)}"
            hx = bool(conn.headers.get("hx-request"))
            headers = {"HX-Redirect": target} if hx else {"location": target}
            cookies = [sessions.clear()] if raw else []
            resp = ASGIResponse(body=b"sign in first", status_code=401 if hx else 303, headers=headers,
                                cookies=cookies, media_type="text/plain")
            await resp(scope, receive, send)
            return
        limiter: RateLimiter = state["limiter"]
        limiter.check(principal.name)
        scope["user"] = principal
        await self.app(scope, receive, send)

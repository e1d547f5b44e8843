"""API keys and roles.

Keys are ``pm_`` + 43 URL-safe characters (256 random bits); only their sha256 is stored, in the
``api_keys`` table of ``settings.app_db``. Roles are ordered: reader < curator < admin (a curator may do
everything a reader may, an admin everything).

* ``KeyStore``: create / list / revoke / authenticate.
* ``AuthMiddleware``: resolves ``Authorization: Bearer <key>`` to a ``Principal`` (``request.user``), 401 on a
  missing or unknown key, then applies the per-key rate limit (429). Open paths (health, metrics, docs) skip it.
* ``require_role(role)``: a Litestar guard; 403 for principals below ``role``. Use on any handler/router::

      from server.auth import require_role
      router = Router("/v1/feedback", route_handlers=[...], guards=[require_role("curator")])
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from pubmind.audit import Actor
from pubmind.durable import connect, immediate
from pubmind.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from server.ratelimit import RateLimiter

Role = Literal["reader", "curator", "admin"]
ROLES: tuple[Role, ...] = ("reader", "curator", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
KEY_PREFIX = "pm_"
OPEN_PATHS = ("/health", "/metrics", "/schema")  # no key needed (prefix match)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL
"""


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the key's name and role (``request.user`` in handlers), and its id ``key:N``, which the
    audit trail records (a name can be reused after a revocation; an id cannot)."""

    name: str
    role: Role
    key_id: str = "anonymous"

    def allows(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]

    @property
    def actor(self) -> Actor:
        return Actor(key_id=self.key_id, role=self.role)


class KeyInfo(msgspec.Struct, frozen=True):
    name: str
    role: Role
    prefix: str  # first characters of the key, to recognise it
    created_at: float
    revoked_at: float | None


def check_role(role: str) -> Role:
    if role not in _RANK:
        raise InvalidInput(f"role must be one of {list(ROLES)}, got {role!r}", param="role")
    return role


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """API keys in the app database (SQLite, WAL). Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect(self.path, schema=_SCHEMA, synchronous="FULL")  # a revoked key stays revoked after a power cut

    def _txn(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, name: str, role: str) -> str:
        """A new key for ``name`` with ``role``; returns the key (the only time it is visible)."""
        role = check_role(role)
        if not name or not name.strip() or len(name) > 100:
            raise InvalidInput(f"key name must be 1-100 characters, got {name!r}", param="name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._txn() as db:
                db.execute("INSERT INTO api_keys (name, role, key_hash, prefix, created_at) VALUES (?,?,?,?,?)",
                           (name, role, hash_key(key), key[:8], time.time()))
        except sqlite3.IntegrityError:
            raise Conflict(f"an active API key named {name!r} already exists; revoke it first or pick "
                           f"another name", param="name") from None
        return key

    def key_id(self, name: str) -> str:
        """``key:N`` of the active key called ``name`` (NotFound otherwise)."""
        with self._lock:
            row = self._db.execute("SELECT id FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no active API key named {name!r}", param="name")
        return f"key:{row[0]}"

    def list(self, include_revoked: bool = False) -> list[KeyInfo]:
        sql = "SELECT name, role, prefix, created_at, revoked_at FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at").fetchall()
        return [KeyInfo(*r) for r in rows]

    def revoke(self, name: str) -> None:
        with self._txn() as db:
            cur = db.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                             (time.time(), name))
            if cur.rowcount == 0:
                raise NotFound(f"no active API key named {name!r}", param="name")

    def authenticate(self, key: str) -> Principal | None:
        if not key.startswith(KEY_PREFIX):
            return None
        with self._lock:
            row = self._db.execute("SELECT name, role, id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                                   (hash_key(key),)).fetchone()
        return Principal(row[0], row[1], key_id=f"key:{row[2]}") if row else None


ANONYMOUS = Principal("anonymous", "admin")  # the caller when settings.server.auth is false


def principal_from_header(header: str, keys: KeyStore | None) -> Principal:
    """The caller named by an ``Authorization`` header (ANONYMOUS when auth is off); Unauthorized otherwise."""
    if keys is None:
        return ANONYMOUS
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' "
                           "(create one with 'pubmind keys create')")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    found = keys.authenticate(token.strip())
    if found is None:
        raise Unauthorized(f"invalid or revoked API key {token.strip()[:8]}...")
    return found


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Bearer-key authentication + per-key rate limit. Reads ``app.state.key_store`` (KeyStore, or None when
    auth is off) and ``app.state.limiter`` (RateLimiter)."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        state = connection.app.state
        keys: KeyStore | None = state["key_store"]
        principal = principal_from_header(connection.headers.get("authorization", ""), keys)
        if keys is None:
            limit_key = f"ip:{connection.client.host if connection.client else '?'}"
        else:
            limit_key = principal.name
        limiter: RateLimiter = state["limiter"]
        limiter.check(limit_key)
        return AuthenticationResult(user=principal, auth=None)


def require_role(role: str) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """Guard allowing principals with ``role`` or a higher one (reader < curator < admin)."""
    needed = check_role(role)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.scope.get("user")
        if not isinstance(principal, Principal):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not principal.allows(needed):
            raise Forbidden(f"API key {principal.name!r} has role {principal.role!r}; "
                            f"{connection.scope.get('method', '')} {connection.url.path} needs role {needed!r} or higher")

    guard.__name__ = f"require_role_{needed}"
    return guard

"""Wire format of ``/v1/keys`` (admin): create (the key shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

import msgspec

from server.auth import Role


class KeyIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, description="Who/what the key is for "
                                      "(unique among active keys).")]
    role: Role


class KeyView(msgspec.Struct, kw_only=True):
    name: str
    role: str
    prefix: str  # first 8 characters of the key, to recognise it (never the key)
    key_id: str | None  # key:N while active (what the audit trail records); None once revoked
    created_at: float
    revoked_at: float | None


class KeyCreated(msgspec.Struct, kw_only=True):
    """The one response that carries the key: store it now, it is not shown again."""

    name: str
    role: str
    key_id: str
    key: str


class KeyList(msgspec.Struct, kw_only=True):
    data: list[KeyView]

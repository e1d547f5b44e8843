"""``KeyService``: API keys for admins (the workbench's Keys page and ``/v1/keys``). Every change is recorded
in the audit trail (``key.create`` / ``key.revoke``, target ``key:N``) with the acting admin's key id."""

from __future__ import annotations

import anyio

from pubmind.audit import AuditLog
from pubmind.errors import Conflict
from server.auth import KeyStore, Principal
from server.keys.protocol import KeyCreated, KeyList, KeyView


class KeyService:
    def __init__(self, keys: KeyStore | None, audit: AuditLog) -> None:
        self.keys, self.audit = keys, audit

    def _store(self) -> KeyStore:
        if self.keys is None:
            raise Conflict("API keys are off (server.auth=false): there are no keys to manage", param="server.auth")
        return self.keys

    def _list(self, include_revoked: bool) -> KeyList:
        store = self._store()
        active = {k.name: store.key_id(k.name) for k in store.list()}
        return KeyList(data=[KeyView(name=k.name, role=k.role, prefix=k.prefix, created_at=k.created_at,
                                     revoked_at=k.revoked_at, key_id=None if k.revoked_at else active.get(k.name))
                             for k in store.list(include_revoked)])

    async def list(self, *, include_revoked: bool = False) -> KeyList:
        return await anyio.to_thread.run_sync(self._list, include_revoked)

    def _create(self, name: str, role: str, by: Principal) -> KeyCreated:
        store = self._store()
        key = store.create(name, role)
        key_id = store.key_id(name)
        self.audit.record("key.create", key_id, by.actor, after={"name": name, "role": role})
        return KeyCreated(name=name, role=role, key_id=key_id, key=key)

    async def create(self, name: str, role: str, *, by: Principal) -> KeyCreated:
        return await anyio.to_thread.run_sync(self._create, name, role, by)

    def _revoke(self, name: str, by: Principal) -> KeyView:
        store = self._store()
        key_id = store.key_id(name)  # NotFound for an unknown or already revoked name
        store.revoke(name)
        self.audit.record("key.revoke", key_id, by.actor, before={"name": name, "revoked": False},
                          after={"revoked": True})
        info = next(k for k in reversed(store.list(include_revoked=True)) if k.name == name)
        return KeyView(name=info.name, role=info.role, prefix=info.prefix, key_id=None, created_at=info.created_at,
                       revoked_at=info.revoked_at)

    async def revoke(self, name: str, *, by: Principal) -> KeyView:
        return await anyio.to_thread.run_sync(self._revoke, name, by)

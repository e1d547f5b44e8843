"""``AuditService``: reads the append-only audit trail (``pubmind.audit``) for admins."""

from __future__ import annotations

import anyio

from pubmind.audit import AuditLog
from server.audit.protocol import AuditList


class AuditService:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def find(self, *, action: str | None, target: str | None, key_id: str | None, since: float | None,
                   until: float | None, limit: int, offset: int) -> AuditList:
        rows = await anyio.to_thread.run_sync(lambda: self.audit.query(
            action=action, target=target, key_id=key_id, since=since, until=until, limit=limit, offset=offset))
        return AuditList(data=rows, count=len(rows))

"""``GET /v1/audit``: every state change, newest first, filtered by action (or a prefix such as
``correction.``), target, key id and time. Admin keys only."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from pubmind.audit import MAX_LIMIT
from server.audit.protocol import AuditList
from server.audit.service import AuditService
from server.auth import require_role

Text = Annotated[str | None, QueryParameter(max_length=1000)]
Time = Annotated[float | None, QueryParameter(ge=0, le=1e11, description="Unix seconds.")]


@get("/", summary="The audit trail, newest first")
async def list_audit(audit_service: NamedDependency[AuditService], action: Text = None, target: Text = None,
                     key_id: Text = None, since: Time = None, until: Time = None,
                     limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
                     offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0) -> AuditList:
    return await audit_service.find(action=action, target=target, key_id=key_id, since=since, until=until,
                                    limit=limit, offset=offset)


router = Router("/v1/audit", route_handlers=[list_audit], guards=[require_role("admin")], tags=["audit"])

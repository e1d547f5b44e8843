"""Types of ``GET /v1/audit``."""

from __future__ import annotations

import msgspec

from pubmind.audit import AuditEntry


class AuditList(msgspec.Struct, kw_only=True):
    data: list[AuditEntry]
    count: int  # rows in this page

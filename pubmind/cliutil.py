"""Shared click plumbing: every package's ``cli.py`` builds commands with these, and ``server/cli.py``
assembles them into the ``pubmind`` command."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pubmind.errors import PubmindError
from pubmind.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def get_settings(ctx: click.Context | None = None) -> Settings:
    """Settings for this invocation (built once per process, kept on the root click context)."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    if root.obj is None:
        root.obj = {}
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings()
    return root.obj["settings"]


def handle_errors(fn: F) -> F:
    """Turn pubmind errors into one clear line on stderr and exit code 1 (2 for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PubmindError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(2 if e.status == 400 else 1)

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def audit(settings: Settings, action: str, target: str, *, before: Any = None, after: Any = None) -> None:
    """Record a change made by a ``pubmind`` command in the audit trail (actor ``cli:<user>``, admin)."""
    from pubmind.audit import Actor, AuditLog

    log = AuditLog(settings.app_db)
    try:
        log.record(action, target, Actor.cli(), before=before, after=after)
    finally:
        log.close()

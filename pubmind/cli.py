"""The ``pubmind`` command: assembles the subcommands each package defines (``pubmind.commands`` entry points)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from importlib.metadata import entry_points

import click
import msgspec

from pubmind.cliutil import emit_json, get_settings, handle_errors
from pubmind.versions import stack_versions


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), help="Data directory (PUBMIND_HOME).")
@click.option("--preset", type=click.Choice(["default", "test", "gpu"]), help="Settings preset (PUBMIND_PRESET).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="TOML settings file (PUBMIND_CONFIG).")
def main(home: str | None, preset: str | None, config_file: str | None) -> None:
    """pubmind: PubMed literature assistant (ingest, search, cited answers, re-tuning)."""
    for var, val in (("PUBMIND_HOME", home), ("PUBMIND_PRESET", preset), ("PUBMIND_CONFIG", config_file)):
        if val:
            os.environ[var] = val


@main.command("config")
@click.option("--markdown", is_flag=True, help="Print the settings reference (env var, default, description).")
def config_cmd(markdown: bool) -> None:
    """Print the effective settings tree as JSON (or the reference table with --markdown)."""
    from pubmind.settings import settings_reference

    if markdown:
        click.echo(settings_reference())
    else:
        emit_json(get_settings().model_dump(mode="json"))


@main.command("audit")
@click.option("--action", help="An action (e.g. correction.accept) or a prefix ending in '.' (e.g. correction.).")
@click.option("--target", help="The changed object (key id, correction id, adapter name, ...).")
@click.option("--key", "key_id", help="The acting key id (key:N, cli:USER, system:WHAT).")
@click.option("--since", type=float, help="Unix time, inclusive.")
@click.option("--until", type=float, help="Unix time, exclusive.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of one line per change.")
@handle_errors
def audit_cmd(action: str | None, target: str | None, key_id: str | None, since: float | None,
              until: float | None, limit: int, as_json: bool) -> None:
    """The audit trail: every state change, newest first."""
    from pubmind.audit import AuditLog

    log = AuditLog(get_settings().app_db)
    try:
        rows = log.query(action=action, target=target, key_id=key_id, since=since, until=until, limit=limit)
    finally:
        log.close()
    if as_json:
        emit_json([msgspec.to_builtins(r) for r in rows])
        return
    for r in rows:
        when = datetime.fromtimestamp(r.at, UTC).isoformat(timespec="seconds")
        click.echo(f"{when} {r.key_id} ({r.role}) {r.action} {r.target}"
                   + (f" {json.dumps(r.before)} -> {json.dumps(r.after)}" if r.before or r.after else ""))


@main.command("version")
@click.option("--json", "as_json", is_flag=True, help="JSON object instead of one line per package.")
def version_cmd(as_json: bool) -> None:
    """pubmind's version and the versions of torch, transformers, peft, trl, sentence-transformers, faiss and
    vLLM in use (vLLM from llm.vllm_url's /version when set, else from llm.vllm_python's venv)."""
    llm = get_settings().llm
    versions = stack_versions(llm.vllm_url, llm.vllm_python)
    if as_json:
        emit_json(versions)
        return
    for name, ver in versions.items():
        if name != "vllm_source":
            click.echo(f"{name:<22} {ver or 'not found'}")
    click.echo(f"{'(vllm read from)':<22} {versions['vllm_source']}")


def _register() -> None:
    """Each package contributes its commands (a list ``COMMANDS``) through the ``pubmind.commands`` entry-point
    group in pyproject.toml, so this base package imports none of them."""
    for ep in sorted(entry_points(group="pubmind.commands"), key=lambda e: e.name):
        for cmd in ep.load():
            main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()

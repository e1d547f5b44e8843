"""``pubmind serve`` and ``pubmind keys ...`` (assembled into the ``pubmind`` command by server/cli.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from pubmind.cliutil import audit, emit_json, get_settings, handle_errors
from pubmind.errors import ServiceUnavailable
from pubmind.settings import Settings

log = logging.getLogger("pubmind.server")


def _with_overrides(settings: Settings, host: str | None, port: int | None, model: str | None,
                    vllm_url: str | None) -> Settings:
    server = settings.server.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    llm = settings.llm.model_copy(update={k: v for k, v in (("model", model), ("vllm_url", vllm_url)) if v})
    return settings.model_copy(update={"server": server, "llm": llm})


CPU_TORCH_THREADS = 1


def _one_torch_thread() -> None:
    """Query embedding on CPU runs one torch thread per call: concurrency comes from requests (batched, see
    server/batching.py), and the CPU is shared with vLLM. Multi-threaded intra-op torch on a busy 2-core
    machine made a MiniLM query encode 6-20x slower (300-1000 ms vs 50 ms) in measurements."""
    import torch

    torch.set_num_threads(CPU_TORCH_THREADS)
    log.info("torch CPU threads for query embedding: %d", CPU_TORCH_THREADS)


@click.command("serve")
@click.option("--host", help="API bind address (server.host).")
@click.option("--port", type=int, help="API port (server.port).")
@click.option("--model", help="Base model directory or hub id (llm.model).")
@click.option("--vllm-url", help="Use this running vLLM instead of launching one (llm.vllm_url).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@handle_errors
def serve_cmd(host: str | None, port: int | None, model: str | None, vllm_url: str | None, log_level: str) -> None:
    """Start the API; launch and supervise vLLM unless llm.vllm_url / --vllm-url points at a running one."""
    import uvicorn

    from finetune.registry import AdapterRegistry
    from generation.modelcheck import resolve_context
    from generation.supervisor import VllmSupervisor, main_thread_sigterm_as_interrupt
    from server.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # the model folder checked up front (tokenizer, chat template, context); max_model_len derived or capped
    settings = resolve_context(_with_overrides(get_settings(), host, port, model, vllm_url))
    if settings.embedding.device == "cpu":
        _one_torch_thread()
    main_thread_sigterm_as_interrupt()  # SIGTERM while vLLM starts -> finally below stops it
    supervisor = None
    try:
        if not settings.llm.vllm_url:
            registry = AdapterRegistry(settings.adapters_dir)
            supervisor = VllmSupervisor(settings, adapters=registry.serving_modules)
            click.echo(f"launching vLLM ({settings.llm.model}) at {supervisor.url}; log: {supervisor.log_path}",
                       err=True)
            supervisor.start()
            click.echo(f"vLLM ready: pid={supervisor.pid} url={supervisor.url}", err=True)
        app = create_app(settings, supervisor=supervisor, scheduled=True)  # + scheduled sync and retention
        config = uvicorn.Config(app, host=settings.server.host, port=settings.server.port, log_level=log_level,
                                timeout_graceful_shutdown=10, lifespan="on")
        server = uvicorn.Server(config)
        server.run()  # handles SIGINT/SIGTERM itself, then returns
        if not server.started:
            raise ServiceUnavailable("the API did not start (see the log above)")
    except KeyboardInterrupt:
        click.echo("interrupted; shutting down", err=True)
    finally:
        if supervisor is not None:
            supervisor.stop()
            click.echo("vLLM stopped", err=True)


@click.group("keys")
def keys_group() -> None:
    """API keys: create, list, revoke (stored hashed in the app database)."""


@keys_group.command("create")
@click.option("--role", type=click.Choice(["reader", "curator", "admin"]), required=True)
@click.option("--name", required=True, help="Who/what the key is for (unique among active keys).")
@handle_errors
def keys_create(role: str, name: str) -> None:
    """Create a key; it is printed once, as the last line."""
    from server.auth import KeyStore

    settings = get_settings()
    store = KeyStore(settings.app_db)
    try:
        key = store.create(name, role)
        key_id = store.key_id(name)
    finally:
        store.close()
    audit(settings, "key.create", key_id, after={"name": name, "role": role})
    click.echo(f"created {role} key {name!r}; store it now, it is not shown again:")
    click.echo(key)


@keys_group.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@handle_errors
def keys_list(include_revoked: bool) -> None:
    """List keys (names, roles, key prefixes; never the keys)."""
    from server.auth import KeyStore

    store = KeyStore(get_settings().app_db)
    try:
        emit_json([{"name": k.name, "role": k.role, "prefix": k.prefix, "created_at": k.created_at,
                    "revoked_at": k.revoked_at} for k in store.list(include_revoked)])
    finally:
        store.close()


@keys_group.command("revoke")
@click.argument("name")
@handle_errors
def keys_revoke(name: str) -> None:
    """Revoke the active key called NAME."""
    from server.auth import KeyStore

    settings = get_settings()
    store = KeyStore(settings.app_db)
    try:
        key_id = store.key_id(name)
        store.revoke(name)
    finally:
        store.close()
    audit(settings, "key.revoke", key_id, before={"name": name, "revoked": False}, after={"revoked": True})
    click.echo(f"revoked key {name!r}")


@click.command("backup")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def backup_cmd(dest: Path) -> None:
    """Snapshot the home into DEST (absent or empty), consistent while the server runs."""
    from server.backup import create_backup

    settings = get_settings()
    manifest = create_backup(settings, dest, progress=lambda s: click.echo(f"backup: {s}", err=True))
    audit(settings, "backup.create", str(dest.absolute()), after={"stats": manifest["stats"]})
    emit_json({k: manifest[k] for k in ("pubmind", "index_generation", "adapters", "stats")}
              | {"files": len(manifest["files"]), "dir": str(dest.absolute())})


@click.command("restore")
@click.argument("src", type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def restore_cmd(src: Path) -> None:
    """Restore the backup SRC into the (empty) home; refuses a corrupt or incomplete backup."""
    from server.backup import restore_backup

    settings = get_settings()
    manifest = restore_backup(settings, src, progress=lambda s: click.echo(f"restore: {s}", err=True))
    audit(settings, "restore.run", str(src.absolute()), after={"stats": manifest["stats"]})
    emit_json({"home": str(settings.home), "stats": manifest["stats"], "from": str(src.absolute())})


@click.command("retention")
@handle_errors
def retention_cmd() -> None:
    """Apply the retention settings now: old answers, old job folders, oversized logs (rotated)."""
    from server.retention import apply_retention

    settings = get_settings()
    out = apply_retention(settings)
    audit(settings, "retention.run", str(settings.home), after=out)
    emit_json(out)


COMMANDS = [serve_cmd, keys_group, backup_cmd, restore_cmd, retention_cmd]

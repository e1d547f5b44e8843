"""The ``pubmind`` command: assembles the subcommands each package defines."""

from __future__ import annotations

import os

import click

from retrieval.cliutil import emit_json, get_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), help="Data directory (PUBMIND_HOME).")
@click.option("--preset", type=click.Choice(["default", "test", "gpu"]), help="Settings preset (PUBMIND_PRESET).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="TOML settings file (PUBMIND_CONFIG).")
def main(home: str | None, preset: str | None, config_file: str | None) -> None:
    """pubmind: PubMed literature assistant (ingest, search, cited answers, re-tuning)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for var, val in (("PUBMIND_HOME", home), ("PUBMIND_PRESET", preset), ("PUBMIND_CONFIG", config_file)):
        if val:
            os.environ[var] = val


@main.command("config")
@click.option("--markdown", is_flag=True, help="Print the settings reference (env var, default, description).")
def config_cmd(markdown: bool) -> None:
    """Print the effective settings tree as JSON (or the reference table with --markdown)."""
    from retrieval.settings import settings_reference

    if markdown:
        click.echo(settings_reference())
    else:
        emit_json(get_settings().model_dump(mode="json"))


@main.command("make-tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--texts-from-store/--no-texts-from-store", default=True,
              help="Train the tokenizer on the corpus store's titles and abstracts (if there is one).")
def make_tiny_model_cmd(out_dir: str, texts_from_store: bool) -> None:
    """Build a tiny random Llama + tokenizer + chat template in OUT_DIR (CPU demos and tests)."""
    from finetune.tiny import build_tiny_causal_lm

    texts: list[str] = []
    settings = get_settings()
    if texts_from_store and settings.corpus_db.exists():
        import sqlite3

        con = sqlite3.connect(f"file:{settings.corpus_db}?mode=ro", uri=True)
        texts = [t for (t,) in con.execute("SELECT text FROM chunks LIMIT 20000")]
        con.close()
    click.echo(str(build_tiny_causal_lm(out_dir, texts)))


def _register() -> None:
    # Each package contributes its own commands; imported here so `pubmind --help` lists them all.
    import importlib

    for mod in ("ingest.cli", "retrieval.cli", "finetune.cli", "server.commands"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # that package has no commands yet
                continue
            raise
        for cmd in getattr(m, "COMMANDS", []):
            main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()

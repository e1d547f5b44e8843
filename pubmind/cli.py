"""The ``pubmind`` command: assembles the subcommands each package defines (``pubmind.commands`` entry points)."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

import click

from pubmind.cliutil import emit_json, get_settings


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


def _register() -> None:
    """Each package contributes its commands (a list ``COMMANDS``) through the ``pubmind.commands`` entry-point
    group in pyproject.toml, so this base package imports none of them."""
    for ep in sorted(entry_points(group="pubmind.commands"), key=lambda e: e.name):
        for cmd in ep.load():
            main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()

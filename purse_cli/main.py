"""The ``purse`` command: a thin layer over the four packages."""

from __future__ import annotations

import click

from purse_cli.demo import demo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="purse-card")
def cli() -> None:
    """An emulated smart card with an electronic purse, and the tools around it."""


cli.add_command(demo)


def main() -> None:
    cli()

"""The ``purse`` command: a thin layer over the four packages.

Every known failure becomes one line on stderr and an exit code (see
:mod:`purse_cli.output`): never a traceback for bad input or a refusal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from apdu.errors import TransportError, WireError
from apdu.status import CardError
from card_os.image import ImageError
from issuer.errors import IssuerError, Refused
from purse_cli.apdu_cmds import apdu
from purse_cli.card_cmds import card
from purse_cli.demo import demo
from purse_cli.home import Home
from purse_cli.issuer_cmds import issuer
from purse_cli.output import EXIT_ERROR, Failure, Refusal
from purse_cli.terminal_cmds import atm, pos
from purse_cli.wallet_cmds import wallet
from terminal.errors import Declined, TerminalError

NO_ARGS_IS_HELP = click.exceptions.NoArgsIsHelpError
REFUSALS = (Declined, Refused, CardError)
ERRORS = (IssuerError, TerminalError, ImageError, TransportError, WireError, OSError)


class PurseGroup(click.Group):
    """Turns our errors, and click's usage errors, into one line and an exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except NO_ARGS_IS_HELP as err:  # a group called without a command: its help
            err.show()
            sys.exit(err.exit_code)
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "purse"
            click.echo(f"purse: {err.format_message()} (see `{where} --help`)", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("purse: aborted", err=True)
            sys.exit(EXIT_ERROR)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except REFUSALS as err:
            raise Refusal(f"refused: {err}") from None
        except ERRORS as err:
            raise Failure(str(err)) from None


@click.group(cls=PurseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="purse-card")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PURSE_HOME",
    default="purse-data",
    show_default=True,
    help="Folder of the issuer, the terminals' state and the demo (env PURSE_HOME).",
)
@click.pass_context
def cli(ctx: click.Context, home: Path) -> None:
    """An emulated smart card with an electronic purse, and the tools around it.

    \b
    Exit codes: 0 done, 1 error, 2 usage error, 3 refused (card, issuer or terminal).
    Amounts are cents (1250) or decimals (12.50); times are ISO 8601.
    """
    ctx.obj = Home(home)


for command in (issuer, atm, pos, wallet, card, apdu, demo):
    cli.add_command(command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

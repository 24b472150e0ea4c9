"""``cdp``: the one entry point for people. Command groups live in ``cdp.commands``.

Heavy libraries (Dagster, Splink, Great Expectations) are imported inside the commands that need them,
so that ``cdp --help`` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from cdp.commands import identity, pipeline, privacy, profile, segments, web
from cdp.commands.common import err_console, fail_line


class OneLineUsageErrors(TyperGroup):
    """Click's own errors on the command line (a missing option, a value of the wrong type or out of range, an
    unknown command) as one line naming the command, like every error the commands report themselves
    (:func:`cdp.commands.common.fail`), instead of a usage box. Asking for help (``cdp``, ``cdp segments``
    with nothing after them) still prints the help."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        extra["windows_expand_args"] = windows_expand_args
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Not standalone: click raises its errors here instead of printing them, and returns the exit
            # code of a typer.Exit (None when the command simply returns).
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's errors, as typer vendors click
            # Typer has printed the help already; it tells this error by its name too (typer #1278).
            if type(exc).__name__ != "NoArgsIsHelpError":
                ctx = getattr(exc, "ctx", None)  # usage errors know their command
                message = " ".join(exc.format_message().split())
                fail_line(f"{ctx.command_path}: {message} (see {ctx.command_path} --help)" if ctx else message)
            sys.exit(exc.exit_code)
        except typer.Abort:  # a confirmation answered no, or Ctrl-D at a prompt
            err_console.print("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="cdp",
    help="Open-source customer data platform: ingest, resolve identities, build profiles, enforce consent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

pipeline.register(app)  # demo, generate, run
app.add_typer(profile.app, name="profile")
app.add_typer(identity.app, name="identity")
app.add_typer(segments.app, name="segments")
app.add_typer(privacy.app, name="privacy")
web.register(app)  # serve, users

if __name__ == "__main__":
    app()

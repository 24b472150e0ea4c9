"""What every command shares: the ``--db`` option, settings, and turning fixable errors into one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from cdp.config import Settings, load_settings
from cdp.errors import CdpError

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)

DbOption = typer.Option(None, "--db", help="DuckDB file of the store (default from config: data/cdp.duckdb).")

F = TypeVar("F", bound=Callable[..., Any])


EngineOption: Any = typer.Option(
    None, "--engine", help="Engine that runs the Splink model: duckdb or spark (default: setting `engine`)."
)


def settings_for(db: Path | None = None, **overrides: Any) -> Settings:
    return load_settings(db_path=db, **overrides)


def fail_line(message: str) -> None:
    """Print ``error: message`` on one line of stderr."""
    # The message is text, not markup: a file or value holding "[...]" must come out as written.
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    fail_line(message)
    raise typer.Exit(code)


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an operating-system error (``SRC -> DST: reason`` for a rename)."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {reason}"


def one_line_errors(func: F) -> F:
    """Report :class:`CdpError`, and an :class:`OSError` the machine raised (a path that cannot be read or
    written: permission denied, not a directory, read-only file system...), as one line and a non-zero
    exit, never as a stack trace. Any other exception is a bug and keeps its trace."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CdpError as exc:
            fail(str(exc))
        except OSError as exc:  # the same exit code as bad input: a person fixes the path, not the code
            fail(os_error_line(exc))
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature typer reads

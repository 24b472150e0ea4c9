"""`cdp serve` (the web console and API) and `cdp users add | token | list | password` (who may use it)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cdp.commands.common import DbOption, console, one_line_errors, settings_for

users_app = typer.Typer(
    help="Console and API users: add, list, set a password, make an API token.", no_args_is_help=True
)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@users_app.command("add")
@one_line_errors
def add(
    name: str = typer.Argument(..., help="User name: lower-case letters, digits, '.', '_' or '-'."),
    role: str = typer.Option(..., "--role", help="marketer, privacy_officer or admin."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    no_password: bool = typer.Option(False, "--no-password", help="API tokens only: no console sign-in."),
    home: Path | None = typer.Option(None, "--home", help="Installation home holding users.db (default from config)."),
) -> None:
    """Create a user with a role; the password is asked twice and stored only as a salted scrypt hash."""
    from cdp.users import UserStore

    settings = settings_for(None, home=home)
    password = None if no_password else _read_password(password_stdin)
    UserStore.for_home(settings.home).add(name, role, password)
    console.print(f"User {name} ({role}) added to {settings.home / 'users.db'}.")


@users_app.command("password")
@one_line_errors
def password(
    name: str = typer.Argument(..., help="User name."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    home: Path | None = typer.Option(None, "--home", help="Installation home holding users.db (default from config)."),
) -> None:
    """Set a user's password (ends the user's console sessions)."""
    from cdp.users import UserStore

    settings = settings_for(None, home=home)
    UserStore.for_home(settings.home).set_password(name, _read_password(password_stdin))
    console.print(f"Password of {name} changed; their sessions were ended.")


@users_app.command("token")
@one_line_errors
def token(
    name: str = typer.Argument(..., help="User name."),
    revoke: bool = typer.Option(False, "--revoke", help="Revoke every token of the user instead."),
    home: Path | None = typer.Option(None, "--home", help="Installation home holding users.db (default from config)."),
) -> None:
    """Make an API token for the user (printed once; only its salted hash is kept)."""
    from cdp.users import UserStore

    settings = settings_for(None, home=home)
    store = UserStore.for_home(settings.home)
    if revoke:
        console.print(f"{store.revoke_tokens(name)} tokens of {name} revoked.")
        return
    console.print(store.new_token(name), soft_wrap=True)


@users_app.command("list")
@one_line_errors
def list_users(
    home: Path | None = typer.Option(None, "--home", help="Installation home holding users.db (default from config)."),
) -> None:
    """Users, their roles and how many API tokens each holds."""
    from rich.table import Table

    from cdp.users import UserStore

    settings = settings_for(None, home=home)
    table = Table("user", "role", "created", "tokens", box=None, pad_edge=False)
    rows = UserStore.for_home(settings.home).list()
    for name, role, created, tokens in rows:
        table.add_row(name, role, created, str(tokens))
    console.print(table)
    console.print(f"{len(rows)} users")


@one_line_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (localhost by default)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    db: Path | None = DbOption,
) -> None:
    """Run the web console and HTTP API (FastAPI on uvicorn); sign in with a user from `cdp users add`."""
    import uvicorn

    from cdp.store import require_store
    from cdp.users import UserStore
    from cdp.web import create_app

    settings = settings_for(db)
    # The console reads and changes an existing store: a mistyped --db is refused here rather than created
    # empty by the first privacy request. Only the existence is checked: a pipeline run may hold the file.
    require_store(settings.db_path)
    users = UserStore.for_home(settings.home)
    if not users.list():
        console.print("[yellow]No users yet:[/yellow] create one with `cdp users add NAME --role admin`.")
    console.print(f"Console on http://{host}:{port}/ over {settings.db_path}; API description at /api/openapi.json")
    # No access log: paths carry internal customer ids, and the log is no place for those.
    uvicorn.run(create_app(settings, users), host=host, port=port, access_log=False, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(users_app, name="users")

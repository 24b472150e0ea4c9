"""`cdp users add | token | list | password` and `cdp serve --help`; the app itself is tested in test_api.py."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cdp.cli import app
from cdp.users import UserStore

runner = CliRunner()


def test_users_add_token_list_and_password(tmp_path: Path):
    home = str(tmp_path / "home")
    added = runner.invoke(app, ["users", "add", "ada", "--role", "admin", "--password-stdin", "--home", home],
                          input="a long enough password\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    users = UserStore.for_home(Path(home))
    assert users.check_password("ada", "a long enough password").role == "admin"  # type: ignore[union-attr]
    assert (Path(home) / "users.db").stat().st_mode & 0o077 == 0  # readable by its owner only
    token = runner.invoke(app, ["users", "token", "ada", "--home", home])
    assert token.exit_code == 0 and users.check_token(token.output.strip()) is not None
    listed = runner.invoke(app, ["users", "list", "--home", home])
    assert "ada" in listed.output and "admin" in listed.output and "1 users" in listed.output
    changed = runner.invoke(app, ["users", "password", "ada", "--password-stdin", "--home", home],
                            input="another long password\n")  # fmt: skip
    assert changed.exit_code == 0 and users.check_password("ada", "another long password") is not None
    revoked = runner.invoke(app, ["users", "token", "ada", "--revoke", "--home", home])
    assert "1 tokens of ada revoked" in revoked.output and users.check_token(token.output.strip()) is None


def test_users_errors_are_one_line(tmp_path: Path):
    home = str(tmp_path / "home")
    bad_role = runner.invoke(app, ["users", "add", "bob", "--role", "owner", "--no-password", "--home", home])
    assert bad_role.exit_code != 0 and "role 'owner' unknown" in bad_role.output and "Traceback" not in bad_role.output
    short = runner.invoke(app, ["users", "add", "bob", "--role", "marketer", "--password-stdin", "--home", home],
                          input="short\n")  # fmt: skip
    assert short.exit_code != 0 and "a password has 10 to 200 characters; this one has 5" in short.output
    long = runner.invoke(
        app, ["users", "add", "bob", "--role", "marketer", "--password-stdin", "--home", home], input="p" * 201 + "\n"
    )  # fmt: skip  (the sign-in form takes 200: it could never sign in)
    assert long.exit_code != 0 and "this one has 201" in long.output
    nobody = runner.invoke(app, ["users", "token", "carol", "--home", home])
    assert nobody.exit_code != 0 and "no user named 'carol'" in nobody.output


def test_serve_has_help():
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "--host" in result.output

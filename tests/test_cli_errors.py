"""`cdp` on bad paths: an unwritable --out, a --db that is no DuckDB store or does not exist, an OSError.
Each must end in one line and a non-zero exit, leave no temporary file, create no store and register
no request. Runs the commands on an empty store; what they do on real data is tested elsewhere."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdp.cli import app
from cdp.commands.common import one_line_errors
from cdp.store import connect
from consent import register

runner = CliRunner()
EMAIL = "ann.lee@fastmail.co.uk"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The installation home (secret key, exports) in the test's folder, not in the working directory."""
    path = tmp_path / "home"
    monkeypatch.setenv("CDP_HOME", str(path))
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An empty store: the core schema and nothing else."""
    path = tmp_path / "cdp.duckdb"
    connect(path).close()
    return path


def cdp(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, *expected: str) -> str:
    """Exit 2 through typer (not an exception escaping the command), one line, naming what it must."""
    assert result.exit_code == 2, (result.exception, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def requests_in(db: Path) -> list[dict]:
    con = connect(db)
    try:
        return register.list_requests(con)
    finally:
        con.close()


def written(folder: Path) -> list[str]:
    """What a command left in the test's folder, the installation home aside."""
    return sorted(p.name for p in folder.iterdir() if p.name != "home")


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


# -- 1. privacy access --out --------------------------------------------------------------------------
def test_access_out_a_directory_is_refused_before_the_request_is_registered(db: Path, tmp_path: Path):
    target = tmp_path / "x" / "accdir"
    target.mkdir(parents=True)
    result = cdp("privacy", "access", "--email", EMAIL, "--out", str(target), "--db", str(db))
    assert_one_line_error(result, str(target), "is a directory")
    assert temp_files(tmp_path) == [] and list(target.iterdir()) == []
    assert requests_in(db) == []


def test_access_out_under_a_file_is_one_line(db: Path, tmp_path: Path):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "a.json"
    result = cdp("privacy", "access", "--email", EMAIL, "--out", str(out), "--db", str(db))
    assert_one_line_error(result, str(out), "not a directory")
    assert temp_files(tmp_path) == [] and requests_in(db) == []


def test_access_write_failing_at_the_end_leaves_no_document_and_no_open_request(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def disk_full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))

    out = tmp_path / "out" / "ann.json"
    with monkeypatch.context() as patch:
        patch.setattr("consent.export.os.replace", disk_full)
        result = cdp("privacy", "access", "--email", EMAIL, "--out", str(out), "--db", str(db))
    assert_one_line_error(result, str(out), "No space left on device")
    assert not out.exists() and temp_files(tmp_path) == []  # the whole document was in the temp file
    assert requests_in(db) == []  # nothing was answered: the attempt is not recorded as a request


def test_access_failing_keeps_an_earlier_request_open_and_the_retry_answers_it(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from cdp.config import load_settings
    from cdp.suppression import load_secret
    from consent.erasure import Subject

    secret = load_secret(load_settings(db_path=db).secret_path)
    con = connect(db)
    # A request received earlier (by the web console's intake, say), still owed to the subject.
    received = register.open_request(con, "access", Subject.from_options(EMAIL, None, None).hash(secret))
    con.close()

    def io_error(*_: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    out = tmp_path / "ann.json"
    with monkeypatch.context() as patch:
        patch.setattr("consent.export.os.replace", io_error)
        failed = cdp("privacy", "access", "--email", EMAIL, "--out", str(out), "--db", str(db))
    assert_one_line_error(failed, str(out))
    assert [(r["request_id"], r["status"]) for r in requests_in(db)] == [(received, register.OPEN)]
    done = cdp("privacy", "access", "--email", EMAIL, "--out", str(out), "--db", str(db))
    assert done.exit_code == 0, done.output
    assert [(r["request_id"], r["status"]) for r in requests_in(db)] == [(received, register.COMPLETED)]
    assert out.exists() and temp_files(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc, where no file can be created")
def test_access_out_in_proc_is_one_line(db: Path, tmp_path: Path):
    result = cdp("privacy", "access", "--email", EMAIL, "--out", "/proc/x.json", "--db", str(db))
    assert_one_line_error(result, "/proc/x.json")
    assert requests_in(db) == []


def test_segments_export_out_a_directory_is_one_line(db: Path, tmp_path: Path):
    target = tmp_path / "d.csv"
    target.mkdir()
    result = cdp("segments", "export", "all_customers", "--purpose", "email_marketing", "--out", str(target),
                 "--db", str(db))  # fmt: skip
    assert_one_line_error(result, str(target), "is a directory")
    assert temp_files(tmp_path) == []


# -- 2. a --db that is no DuckDB store; an OSError --------------------------------------------------
COMMANDS_ON_A_STORE = {
    "profile show": ["profile", "show", "--email", EMAIL],
    "segments preview": ["segments", "preview", "all_customers"],
    "segments export": ["segments", "export", "all_customers", "--purpose", "email_marketing", "--out", "{tmp}/e.csv"],
    "privacy requests": ["privacy", "requests"],
    "privacy access": ["privacy", "access", "--email", EMAIL, "--out", "{tmp}/a.json"],
    "privacy erase --dry-run": ["privacy", "erase", "--email", EMAIL, "--dry-run"],
    "privacy erase --yes": ["privacy", "erase", "--email", EMAIL, "--yes"],
    "privacy restrict": ["privacy", "restrict", "--email", EMAIL],
    "privacy unrestrict": ["privacy", "unrestrict", "--email", EMAIL],
    "identity evaluate": ["identity", "evaluate", "--truth", "{tmp}/truth.csv"],
    "run": ["run", "--inbox", "{tmp}"],
}


def _args(name: str, tmp_path: Path, db: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS_ON_A_STORE[name]] + ["--db", str(db)]


@pytest.mark.parametrize("name", list(COMMANDS_ON_A_STORE))
def test_a_db_that_is_not_a_duckdb_file_is_one_line(name: str, tmp_path: Path):
    garbage = tmp_path / "f.duckdb"
    garbage.write_text("garbage\n")
    result = runner.invoke(app, _args(name, tmp_path, garbage))
    assert_one_line_error(result, f"{garbage}: not a DuckDB database file")
    assert garbage.read_text() == "garbage\n"


@pytest.mark.parametrize("name", ["profile show", "privacy requests", "segments export", "run"])
def test_a_db_that_is_a_directory_is_one_line(name: str, tmp_path: Path):
    folder = tmp_path / "store.duckdb"
    folder.mkdir()
    result = runner.invoke(app, _args(name, tmp_path, folder))
    assert_one_line_error(result, f"{folder}: is a directory")


def test_generate_into_an_impossible_folder_is_one_line_and_writes_nothing(tmp_path: Path):
    (tmp_path / "afile").write_text("")
    result = cdp("generate", "--out", str(tmp_path / "afile" / "g"), "--customers", "10")
    assert_one_line_error(result, str(tmp_path / "afile"), "is not a directory")
    result = cdp("generate", "--out", str(tmp_path / "afile"), "--customers", "10")
    assert_one_line_error(result, str(tmp_path / "afile"), "is a file")
    assert written(tmp_path) == ["afile"]  # no ground truth folder either


@pytest.mark.parametrize("out", ["", "."])
def test_generate_needs_a_named_folder(out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cdp("generate", "--out", out, "--customers", "10"), "name the inbox folder")
    assert written(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["generate", "--out", "g", "--customers", "0"], ["cdp generate: ", "'--customers'", "--help"]),
        (["generate", "--out", "g", "--customers", "abc"], ["cdp generate: ", "'--customers'"]),
        (["generate", "--out", "g", "--customers", "99999999999999999999"], ["'--customers'", "10000000"]),
        (["generate", "--out", "g", "--seed", "-1"], ["'--seed'"]),
        (["segments", "export", "all_customers", "--purpose", "email_marketing"], ["cdp segments export: ", "'--out'"]),
        (["run"], ["cdp run: ", "'--inbox'"]),
        (["segments", "preview"], ["cdp segments preview: ", "'name'"]),
        (["privacy", "requests", "--bogus"], ["cdp privacy requests: ", "--bogus"]),
        (["nosuch"], ["cdp: ", "nosuch"]),
    ],
)
def test_command_line_mistakes_are_one_line(args: list[str], expected: list[str], tmp_path: Path, monkeypatch):
    """Click's own errors (missing option, bad or out-of-range value, unknown command) come out as the
    commands' errors do: one line naming the command, not a usage box; nothing is written."""
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cdp(*args), *expected)
    assert written(tmp_path) == []


def test_run_on_a_file_says_it_is_not_an_inbox_folder(tmp_path: Path):
    (tmp_path / "README.md").write_text("not an inbox")
    assert_one_line_error(cdp("run", "--inbox", str(tmp_path / "README.md")), "a file, not an inbox folder")
    assert_one_line_error(cdp("run", "--inbox", str(tmp_path / "nowhere")), "no such inbox folder")


@pytest.mark.parametrize("name", ["profile show", "privacy requests", "segments export", "run"])
def test_an_empty_db_is_one_line(name: str, tmp_path: Path):
    result = runner.invoke(app, _args(name, tmp_path, Path(""))[:-1] + [""])
    assert_one_line_error(result, "db_path: '.' names a folder")


def test_asking_for_help_is_not_an_error():
    result = cdp("segments")
    assert result.exit_code == 2 and "Usage" in result.output and "error:" not in result.output
    assert cdp("segments", "--help").exit_code == 0


def test_the_installed_command_prints_no_traceback(tmp_path: Path):
    garbage = tmp_path / "f.duckdb"
    garbage.write_text("garbage\n")
    env = {**os.environ, "CDP_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "cdp.cli", "privacy", "requests", "--db", str(garbage)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"error: {garbage}: not a DuckDB database file (or a damaged one)", done.stderr


def test_a_programming_error_keeps_its_traceback():
    @one_line_errors
    def buggy() -> None:
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        buggy()


# -- 3. a --db that does not exist ----------------------------------------------------------------
MUST_EXIST = [n for n in COMMANDS_ON_A_STORE if n != "run"] + ["serve"]


@pytest.mark.parametrize("name", MUST_EXIST)
def test_a_missing_db_is_refused_and_not_created(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("serve started over a missing store"))
    missing = tmp_path / "typo" / "cdp.duckdb"
    args = ["serve", "--db", str(missing)] if name == "serve" else _args(name, tmp_path, missing)
    result = runner.invoke(app, args)
    assert_one_line_error(result, f"{missing}: no database yet")
    assert not missing.exists() and not missing.parent.exists()
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "e.csv").exists()

"""`cdp run` on an inbox with bad files: the run goes on, and its summary names every file it could not take."""

from typer.testing import CliRunner

from cdp.cli import app


def test_the_summary_names_rejected_and_unreadable_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    (inbox / "store").mkdir()
    (inbox / "crm" / "crm-1.csv").write_text('crm_id,first_name,email\nC1,Ann,ann@x.com\nC2,"Bob,bob@x.com\n')
    (inbox / "store" / "store-1.csv").write_text("transaction_id,amount\nT1,10\n")
    (inbox / "store" / "store-2.parquet").write_text("not parquet")
    (inbox / "store" / "store-3.txt").write_text("transaction_id,transaction_time\nT3,2026-01-01\n")
    (inbox / "store" / ".DS_Store").write_text("")
    (inbox / "misc").mkdir()
    result = CliRunner().invoke(app, ["run", "--inbox", str(inbox), "--db", str(tmp_path / "cdp.duckdb")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "rows in 3 = 1 loaded + 2 quarantined + 0 suppressed" in out
    assert "rejected file store/store-1.csv: missing required column 'transaction_time'" in out
    assert "unreadable file " in out and "store-2.parquet: cannot be read as parquet" in out
    assert "(not ingested; tried again next run)" in out
    # Files and folders that are no export batch are named too, every run, not ignored unseen.
    assert "store-3.txt: not an export batch by its name (.csv, .json, .jsonl, .ndjson, .parquet)" in out
    assert ".DS_Store" not in out
    assert f"not a source folder {inbox / 'misc'} (sources: web, app, store, crm, consent); not read" in out


def test_the_store_is_held_from_the_first_check_to_the_summary(tmp_path, monkeypatch):
    """A second `cdp run` (or any writer) started while one runs is refused in one line at its first check,
    instead of passing it while the first run still loads its code and then failing step by step."""
    import subprocess
    import sys

    import pipelines.run

    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    (inbox / "crm" / "crm-1.csv").write_text("crm_id,first_name,email\nC1,Ann,ann@x.com\n")
    db = tmp_path / "cdp.duckdb"
    real = pipelines.run.run_pipeline
    others = []

    def run_while_another_tries(*args, **kwargs):  # type: ignore[no-untyped-def]
        other = "import sys; from cdp.store import connect; connect(sys.argv[1])"
        others.append(subprocess.run([sys.executable, "-c", other, str(db)], capture_output=True, text=True))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipelines.run, "run_pipeline", run_while_another_tries)
    result = CliRunner().invoke(app, ["run", "--inbox", str(inbox), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert others[0].returncode != 0
    assert "the database is in use by another process" in others[0].stderr.strip().splitlines()[-1]
    assert "rows in 1 = 1 loaded" in " ".join(result.output.split())


def test_a_raw_suite_warns_once_per_batch_not_on_every_later_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "inbox"
    (inbox / "web").mkdir(parents=True)
    rows = "".join(f"w{i},2026-01-01T10:00:00Z,c{i},PageView\n" for i in range(4))  # not an event type we know
    (inbox / "web" / "web-1.csv").write_text("event_id,event_time,anonymous_id,event_type\n" + rows)
    args = ["run", "--inbox", str(inbox), "--db", str(tmp_path / "cdp.duckdb")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "check raw_web.raw_expectations_pass FAILED" in first.output, first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "raw_web.raw_expectations_pass passed" in again.output, again.output


def test_a_later_run_counts_its_own_files_and_rows_beside_the_stores(tmp_path, monkeypatch):
    """The summary's files and rows are this run's (a daily run of 3 files is not shown as the 300 the store
    holds); the store's totals follow, and a file an earlier run rejected is counted, not listed again."""
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    (inbox / "store").mkdir()
    (inbox / "crm" / "crm-1.csv").write_text("crm_id,first_name,email\nC1,Ann,ann@x.com\nC2,Bob,bob@x.com\n")
    (inbox / "store" / "store-1.csv").write_text("transaction_id,amount\nT1,10\n")  # rejected: no time column
    args = ["run", "--inbox", str(inbox), "--db", str(tmp_path / "cdp.duckdb")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    out = " ".join(first.output.split())
    assert "files ingested 2 (1 rejected) rows in 3 = 2 loaded + 1 quarantined + 0 suppressed" in out
    assert "quarantined 1 file rejected: missing required column transaction_time (rows in table quarantine)" in out
    assert "the store holds" not in out

    (inbox / "crm" / "crm-2.csv").write_text('crm_id,first_name,email\nC3,Cat,cat@x.com\nC4,"Dan,dan@x.com\n')
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    out = " ".join(second.output.split())
    assert "files ingested 1 (0 rejected); the store holds 3 (1 rejected)" in out
    assert "rows in 2 = 1 loaded + 1 quarantined + 0 suppressed; the store 5" in out
    assert "quarantined 1 malformed CSV line: unterminated quote (rows in table quarantine)" in out  # this run's
    assert "rejected file store/store-1.csv" not in out
    assert "1 file(s) rejected by earlier runs" in out

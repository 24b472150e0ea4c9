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
    (inbox / "web-2.csv").write_text("event_id,event_time,anonymous_id\nW1,2026-01-01T10:00:00Z,c1\n")  # not in web/
    (inbox / ".hidden").write_text("")
    result = CliRunner().invoke(app, ["run", "--inbox", str(inbox), "--db", str(tmp_path / "cdp.duckdb")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "rows in 3 = 1 loaded + 2 quarantined + 0 suppressed" in out
    assert "rejected file store/store-1.csv: missing required column 'transaction_time'" in out
    # The step's line says why as well, once: the file appears there and in the summary, no more.
    assert "store/store-1.csv: rejected (missing required column 'transaction_time'), 0 loaded, 1 quarantined" in out
    assert out.count("store-1.csv") == 2 and out.count("store-3.txt") == 2
    assert "unreadable file " in out and "store-2.parquet: cannot be read as parquet" in out
    assert "(not ingested; tried again next run)" in out
    # Files and folders that are no export batch are named too, every run, not ignored unseen.
    assert "store-3.txt: not an export batch by its name (.csv, .json, .jsonl, .ndjson, .parquet)" in out
    assert ".DS_Store" not in out
    assert f"not a source folder {inbox / 'misc'} (sources: web, app, store, crm, consent); not read" in out
    assert f"not in a source folder {inbox / 'web-2.csv'}; not read (move it into the folder of its source" in out
    assert ".hidden" not in out


def test_a_run_started_elsewhere_fails_without_its_inbox_and_logs_what_it_does_not_read(tmp_path):
    """A run from the Dagster UI or a schedule has no `cdp run` to check its inbox first: with no inbox folder
    its raw steps fail, naming it, and what of the inbox no run reads is logged once, by its first raw step."""
    import logging

    import dagster as dg

    from cdp.config import load_settings
    from pipelines.definitions import build_definitions
    from pipelines.resources import CdpStore, Inbox

    settings = load_settings(db_path=tmp_path / "cdp.duckdb", home=tmp_path / "home")
    missing = tmp_path / "nowhere"

    instance = dg.DagsterInstance.ephemeral()

    def run(inbox, selection):
        resources = {"store": CdpStore.from_settings(settings), "inbox": Inbox(path=str(inbox))}
        job = build_definitions(resources).resolve_job_def("cdp_pipeline")
        keys = [dg.AssetKey(k) for k in selection]
        return job.execute_in_process(instance=instance, raise_on_error=False, asset_selection=keys)

    failed = run(missing, ["raw_web"])
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert f"{missing}: no such inbox folder; nothing was read" in failure.step_failure_data.error.message

    inbox = tmp_path / "inbox"
    (inbox / "web").mkdir(parents=True)
    (inbox / "exports").mkdir()
    (inbox / "crm-1.csv").write_text("crm_id,first_name\nC1,Ann\n")
    result = run(inbox, ["raw_web", "raw_crm", "raw_store"])
    assert result.success
    warnings = [(e.step_key, e.user_message) for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    foreign = f"not a source folder {inbox / 'exports'} (sources: web, app, store, crm, consent); not read"
    assert warnings.count(("raw_web", foreign)) == 1, warnings
    assert sum("not in a source folder" in m for _, m in warnings) == 1, warnings
    assert all(step == "raw_web" for step, _ in warnings), warnings


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
    # The line says which expectation failed, and how often (counts only, no values).
    line = next(x for x in first.output.splitlines() if "raw_expectations_pass FAILED" in x)
    assert "expect_column_values_to_be_in_set(event_type): 4 unexpected" in " ".join(first.output.split()), line
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
    assert "1 file(s) rejected by earlier runs and not loaded since" in out

    # The rejected file, fixed and dropped again under its name, loads: it is no longer counted.
    (inbox / "store" / "store-1.csv").write_text("transaction_id,transaction_time,amount\nT1,2026-01-01T10:00:00Z,10\n")
    third = CliRunner().invoke(app, args)
    assert third.exit_code == 0, third.output
    assert "rejected by earlier runs" not in third.output, third.output


def test_strict_exits_3_when_the_run_left_something_unread_or_a_warning_check_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "inbox"
    (inbox / "web").mkdir(parents=True)
    (inbox / "web" / "web-1.csv").write_text("event_id,event_time,anonymous_id\nW1,2026-01-01T10:00:00Z,c1\n")
    args = ["run", "--inbox", str(inbox), "--db", str(tmp_path / "cdp.duckdb"), "--strict"]
    clean = CliRunner().invoke(app, args)
    assert clean.exit_code == 0, clean.output
    (inbox / "web" / "web-2.csv").write_text("event_id,anonymous_id\nW2,c2\n")  # no event_time: rejected
    (inbox / "web-3.csv").write_text("event_id,event_time,anonymous_id\nW3,2026-01-01T10:00:00Z,c3\n")
    rows = "".join(f"w{i},2026-01-02T10:00:00Z,c{i},PageView\n" for i in range(4))  # an event type we do not know
    (inbox / "web" / "web-4.csv").write_text("event_id,event_time,anonymous_id,event_type\n" + rows)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    last = result.output.strip().splitlines()[-1]
    assert "--strict: 1 file(s) rejected, 1 warning-level check(s) failed, 1 thing(s) in the inbox not read" in last
    without = CliRunner().invoke(app, args[:-1])  # the same run without --strict: exit 0
    assert without.exit_code == 0, without.output


def test_a_failed_staged_suite_stops_the_run_in_its_step_and_is_validated_again_next_run(tmp_path, monkeypatch):
    """The staged suite is blocking and evaluated in the step that stages (pipelines.checks): when it fails,
    identity and everything after it do not run, and the batch is validated again by the next run."""
    import cdp.quality
    from cdp.quality import SUITES, Expect
    from cdp.store import connect

    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    (inbox / "crm" / "crm-1.csv").write_text("crm_id,first_name,email\nC1,Ann,ann@x.com\nC2,Bob,bob@x.com\n")
    strict = [*SUITES["stg_records"], Expect("ExpectColumnValuesToBeInSet", {"column": "source", "value_set": ["web"]})]
    monkeypatch.setitem(cdp.quality.SUITES, "stg_records", strict)
    args = ["run", "--inbox", str(inbox), "--db", str(tmp_path / "cdp.duckdb")]

    def validated() -> int:
        con = connect(tmp_path / "cdp.duckdb", read_only=True)
        try:
            sql = "SELECT count(*) FROM validated_batches WHERE table_name = 'stg_records'"
            return int(con.execute(sql).fetchall()[0][0])
        finally:
            con.close()

    first = CliRunner().invoke(app, args)
    out = " ".join(first.output.split())
    assert first.exit_code == 1, first.output
    assert "check stg_records.staged_expectations_pass FAILED" in out
    assert "expect_column_values_to_be_in_set(source): 2 unexpected" in out
    assert "✗ stg_records FAILED" in out and "customer_source_records ok" not in out
    assert "customer_source_records: Dependencies for step customer_source_records failed: ['stg_records']" in out
    assert "error: step stg_records failed: blocking check stg_records.staged_expectations_pass failed" in out
    assert validated() == 0  # the failed batch is not taken as validated
    monkeypatch.setitem(cdp.quality.SUITES, "stg_records", strict[:-1])
    again = CliRunner().invoke(app, args)
    out = " ".join(again.output.split())
    assert again.exit_code == 0, again.output
    assert "check stg_records.staged_expectations_pass passed" in out and "customer_source_records ok" in out
    assert validated() == 1  # validated by this run, not passed over as already seen

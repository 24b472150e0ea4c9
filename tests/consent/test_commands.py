"""`cdp profile show` and `cdp segments list|preview|export` on a small store file; not the pipeline."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cdp.cli import app
from cdp.store import connect, table_exists
from identity.resolve import ensure_identity_schema

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path, w) -> Path:
    path = tmp_path / "cdp.duckdb"
    con = connect(path)
    w.make_world(con)
    w.rebuild(con, as_of=w.at(20))
    con.close()
    return path


def cdp(*args: str):
    return runner.invoke(app, list(args))


def test_profile_show_by_email_phone_and_id(db: Path):
    by_email = cdp("profile", "show", "--email", " ALee@Mailbox.com ", "--db", str(db))
    assert by_email.exit_code == 0, by_email.output
    assert "customer cA" in by_email.output and "Ann" in by_email.output and "crmA" in by_email.output
    assert "email_marketing" in by_email.output and "granted" in by_email.output
    assert "no (no_consent)" in by_email.output  # e.g. push_marketing: no event, no consent
    household = cdp("profile", "show", "--phone", "07911 100999", "--db", str(db))
    assert household.exit_code == 0 and "2 customers carry this identifier" in household.output
    assert "customer cB" in household.output and "customer cC" in household.output
    restricted = cdp("profile", "show", "--customer-id", "cE", "--db", str(db))
    assert "no (restricted)" in restricted.output


def test_profile_show_errors_are_one_line(db: Path):
    both = cdp("profile", "show", "--email", "alee@mailbox.com", "--phone", "1", "--db", str(db))
    assert both.exit_code != 0 and "exactly one of" in both.output
    bad = cdp("profile", "show", "--email", "not-an-email", "--db", str(db))
    assert bad.exit_code != 0 and "not a valid email" in bad.output and "Traceback" not in bad.output
    missing = cdp("profile", "show", "--customer-id", "nobody", "--db", str(db))
    assert missing.exit_code == 1 and "No customer found" in missing.output


def test_profile_show_reads_a_customer_id_as_typed_and_says_when_it_was_merged(db: Path):
    con = connect(db)
    con.execute("UPDATE customer_source_records SET customer_id = 'cus_000000007' WHERE customer_id = 'cA'")
    con.execute("UPDATE customer_profiles SET customer_id = 'cus_000000007' WHERE customer_id = 'cA'")
    ensure_identity_schema(con)
    con.execute("INSERT INTO customer_id_history VALUES ('cus_000000003', 'cus_000000007', 'merged', 'r2', now())")
    con.close()
    typed = cdp("profile", "show", "--customer-id", " CUS_000000007 ", "--db", str(db))
    assert typed.exit_code == 0 and "customer cus_000000007" in typed.output
    merged = cdp("profile", "show", "--customer-id", "cus_000000003", "--db", str(db))
    assert merged.exit_code == 0 and "customer cus_000000007" in merged.output
    assert "cus_000000003 is no longer a customer id: its records are now cus_000000007's" in merged.output


def test_segments_list_preview_export(db: Path, tmp_path: Path):
    segs = tmp_path / "segs"
    segs.mkdir()
    spenders = "name: spenders\ndescription: big\nwhere: total_spend >= 5\nfields: [first_name]\n"
    (segs / "spenders.yaml").write_text(spenders)
    (segs / "evil.yaml").write_text("name: evil\nwhere: read_csv('/etc/passwd') IS NULL\n")
    listed = runner.invoke(app, ["segments", "list", "--segments-dir", str(segs), "--db", str(db)],
                           env={"COLUMNS": "240"})  # fmt: skip
    # An invalid segment is listed with its reason, and the command says so in its exit code.
    assert listed.exit_code == 1 and "all_customers" in listed.output and "spenders" in listed.output
    assert "1 invalid" in listed.output
    lines = listed.output.splitlines()
    block = {lines[i].split(":")[0]: lines[i + 1].strip() for i in range(len(lines) - 1) if not lines[i][:1].isspace()}
    assert block["all_customers"].startswith("7 customers; may be contacted: email_marketing 3, sms_marketing 1")
    assert block["spenders"].startswith("2 customers; may be contacted: email_marketing 1, ")
    assert "evil: invalid:" in listed.output
    (segs / "evil.yaml").unlink()
    no_store = cdp("segments", "list", "--segments-dir", str(segs), "--db", str(tmp_path / "none.duckdb"))
    assert no_store.exit_code == 0 and "`cdp run --inbox DIR` first for the counts" in " ".join(no_store.output.split())
    no_folder = cdp("segments", "list", "--segments-dir", str(tmp_path / "nowhere"), "--db", str(db))
    assert no_folder.exit_code == 0 and "No segments folder at" in " ".join(no_folder.output.split())
    shown = cdp("segments", "preview", "all_customers", "--purpose", "email_marketing", "--db", str(db),
                "--segments-dir", str(segs))  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "7 customers before consent" in shown.output
    assert (
        "email_marketing   (email): 3 of 7 may be contacted; "
        "left out: restricted 1, withdrawn 1, no consent 1, no contact point 1"
    ) in shown.output
    out = tmp_path / "spenders.csv"
    done = cdp("segments", "export", "spenders", "--purpose", "email_marketing", "--out", str(out),
               "--db", str(db), "--segments-dir", str(segs))  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "Exported 1 of 2 customers" in done.output  # cB (spent 10) withdrew; only cC (250) remains
    assert pd.read_csv(out).to_dict("records") == [
        {"customer_id": "cC", "email": "clee@mailbox.com", "first_name": "Cat"}
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_preview_counts_are_the_exports_once_an_event_came_into_force(db: Path, tmp_path: Path, w):
    """A withdrawal that came into force since consent state was computed (a run took it into the ledger
    before its consent step, or it was dated a little ahead) applies to an export at once; preview and list
    counted without it, so they promised more people than the export then wrote."""
    from datetime import datetime

    from consent.ledger import sync_ledger

    con = connect(db)
    w.add_consent(con, "k80", datetime(2026, 1, 21), "email_marketing", "withdrawn", email="alee@mailbox.com")
    sync_ledger(con)
    con.close()
    shown = cdp("segments", "preview", "all_customers", "--purpose", "email_marketing", "--db", str(db))
    assert "email_marketing   (email): 2 of 7 may be contacted" in shown.output, shown.output
    listed = runner.invoke(app, ["segments", "list", "--db", str(db), "--segments-dir", str(tmp_path)],
                           env={"COLUMNS": "240"})  # fmt: skip
    assert "may be contacted: email_marketing 2," in listed.output
    out = tmp_path / "all.csv"
    done = cdp(
        "segments", "export", "all_customers", "--purpose", "email_marketing", "--out", str(out), "--db", str(db)
    )
    assert done.exit_code == 0 and len(pd.read_csv(out)) == 2


def test_segments_list_goes_on_past_a_segment_that_fails_on_the_data(db: Path, tmp_path: Path):
    segs = tmp_path / "segs"
    segs.mkdir()
    (segs / "castok.yaml").write_text("name: castok\nwhere: CAST(first_name AS DATE) > DATE '2020-01-01'\n")
    (segs / "zlast.yaml").write_text("name: zlast\nwhere: total_spend >= 5\n")
    listed = runner.invoke(app, ["segments", "list", "--segments-dir", str(segs), "--db", str(db)],
                           env={"COLUMNS": "240"})  # fmt: skip
    assert listed.exit_code == 1, listed.output
    lines = listed.output.splitlines()
    failing = lines[lines.index("castok: -") + 1].strip()
    assert failing == (
        f"failed: {segs / 'castok.yaml'}: condition 1 (CAST(first_name AS DATE) > DATE '2020-01-01') "
        "cannot run on the data (conversion error)"
    )
    assert lines[lines.index("zlast: -") + 1].strip().startswith("2 customers; may be contacted:")
    assert lines[-1] == f"3 segments in {segs} (including built-in all_customers), 1 failed on the data"


def test_segment_injection_is_refused_on_the_command_line(db: Path, tmp_path: Path):
    segs = tmp_path / "segs"
    segs.mkdir()
    leak = tmp_path / "leak.csv"
    (segs / "evil.yaml").write_text(f"name: evil\nwhere: \"x = ''; COPY customer_profiles TO '{leak}'\"\n")
    result = cdp("segments", "export", "evil", "--purpose", "email_marketing", "--out", str(tmp_path / "e.csv"),
                 "--db", str(db), "--segments-dir", str(segs))  # fmt: skip
    assert result.exit_code != 0 and "evil.yaml: condition 1" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not leak.exists() and not (tmp_path / "e.csv").exists()
    unknown = cdp("segments", "export", "all_customers", "--purpose", "spam", "--out", str(tmp_path / "s.csv"),
                  "--db", str(db))  # fmt: skip
    assert unknown.exit_code != 0 and "unknown purpose 'spam'" in unknown.output


def test_segments_export_to_a_directory_is_one_line_and_leaves_nothing(db: Path, tmp_path: Path):
    target = tmp_path / "out.csv"
    target.mkdir()
    result = cdp("segments", "export", "all_customers", "--purpose", "email_marketing", "--out", str(target),
                 "--db", str(db))  # fmt: skip
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.strip() == f"error: {target}: is a directory; name the export file to write"
    assert list(target.iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))
    con = connect(db, read_only=True)
    try:  # nothing recorded as exported
        assert not table_exists(con, "export_register") or con.execute(
            "SELECT count(*) FROM export_register"
        ).fetchall() == [(0,)]
    finally:
        con.close()


def test_preview_counts_as_of_the_last_run_and_says_so_while_another_process_reads_the_store(
    db: Path, tmp_path: Path, w
) -> None:
    """Bringing consent to now needs a short write; while another process has the store open it cannot, and
    preview counted nothing at all (the store is busy). It now counts as of the last run and says what it
    leaves out."""
    import subprocess
    import sys
    import time
    from datetime import datetime

    from consent.ledger import sync_ledger

    con = connect(db)
    w.add_consent(con, "k80", datetime(2026, 1, 21), "email_marketing", "withdrawn", email="alee@mailbox.com")
    sync_ledger(con)
    con.close()
    ready = tmp_path / "ready"
    hold = "import duckdb, pathlib, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
    hold += "pathlib.Path(sys.argv[2]).touch(); time.sleep(60)"
    reader = subprocess.Popen([sys.executable, "-c", hold, str(db), str(ready)])
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.05)
        shown = cdp("segments", "preview", "all_customers", "--purpose", "email_marketing", "--db", str(db))
    finally:
        reader.kill()
        reader.wait()
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "3 of 7 may be contacted" in text and "1 consent events came into force since the last run" in text
    again = cdp("segments", "preview", "all_customers", "--purpose", "email_marketing", "--db", str(db))
    assert "2 of 7 may be contacted" in again.output and "came into force" not in again.output

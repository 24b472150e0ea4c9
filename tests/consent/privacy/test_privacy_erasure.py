"""Erasure: the dry run, the erasure of every row and byte, suppression of re-ingestion, the household
member who shares a landline, the erasure map's coverage, and a store held by another process.
Access, restriction and the register are in test_privacy_requests.py."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import duckdb
import pytest
from typer.testing import CliRunner

from cdp.commands import privacy as privacy_cli
from cdp.config import Settings
from cdp.errors import CdpError
from cdp.store import connect
from cdp.suppression import identifier_hash, load_secret
from consent import erasure
from consent.erasure import ERASURE_MAP, KEPT_TABLES, Subject, uncovered_tables

BOB = "bob.other@fastmail.co.uk"
ALICE = Subject.from_options("  alice.smith@GoogleMail.com ", None, None)  # another spelling of her email


def _open(world: Any) -> duckdb.DuckDBPyConnection:
    """A store connection that writes uncompressed, so that a grep of the file sees every string."""
    con = connect(world.settings.db_path)
    con.execute("PRAGMA force_compression = 'uncompressed'")
    return con


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, set[tuple[object, ...]]]:
    """Every row of every table, as text, by table."""
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = 'main' AND table_type = 'BASE TABLE'").fetchall()]  # fmt: skip
    return {t: {tuple(map(str, row)) for row in con.execute(f"SELECT * FROM {t}").fetchall()} for t in tables}


def _mentions(row: tuple[object, ...], strings: tuple[bytes, ...]) -> bool:
    text = " ".join(map(str, row)).lower()
    return any(s.decode().lower() in text for s in strings)


def test_dry_run_lists_the_subject_and_changes_nothing_but_the_register(world: Any) -> None:
    con = connect(world.settings.db_path)
    before = _snapshot(con)
    report = erasure.erase(world.settings, ALICE, dry_run=True, con=con)
    plan = report.plan
    assert plan.scope.customers == [world.alice]
    assert plan.scope.records_by_source == {"app": 2, "crm": 1, "store": 1, "web": 2}
    assert plan.table_counts["raw_web"] == 2 and plan.table_counts["raw_app"] == 2
    assert plan.table_counts["raw_crm"] == 2 and plan.table_counts["raw_store"] == 1  # both CRM versions
    assert plan.table_counts["raw_consent"] == 1  # K-1; K-3 names only the shared landline
    assert plan.table_counts["quarantine"] == 3  # T-4, W-5 and a malformed line carry her email
    assert plan.table_counts["customer_profiles"] == 1 and plan.table_counts["export_members"] == 1
    # The identifier types that linked her, with the landline flagged as shared (kept, not suppressed).
    types = plan.scope.identifier_types
    assert {"email_key", "user_id", "loyalty_id", "crm_id", "anonymous_id", "device_id", "phone_e164"} == set(types)
    assert types["phone_e164"]["shared"] == 1 and types["email_key"]["shared"] == 0
    # ... and what joined her units into one customer (the landline joined nothing: it is shared).
    assert (
        set(plan.scope.link_evidence) == {"user_id", "loyalty_id", "email_key"}
        and "phone_e164" not in plan.scope.link_evidence
    )
    assert "phone_e164" in plan.suppress  # her mobile; the landline is not among the hashes
    assert plan.suppress["phone_e164"] == 1
    assert [e["segment"] for e in plan.exports] == ["all_customers"]

    con = connect(world.settings.db_path)
    after = _snapshot(con)
    requests = con.execute("SELECT kind, status, completed_at FROM privacy_requests").fetchall()
    con.close()
    assert requests == [("erasure", "open", None)]
    changed = {t for t in after if after[t] != before.get(t)}
    assert changed == {"privacy_requests", "audit_log"}


def test_erasure_leaves_no_row_and_no_byte_of_the_subject_and_costs_nobody_else_a_record(
    world: Any, pw: SimpleNamespace
) -> None:
    con = connect(world.settings.db_path)
    before = _snapshot(con)
    con.close()
    assert pw.ALICE_STRINGS[0] in pw.file_bytes(world.settings.db_path)  # the grep below can see her

    report = erasure.erase(world.settings, ALICE, dry_run=False, con=_open(world))

    # Rows: no table holds any of her identifiers, in any spelling.
    con = connect(world.settings.db_path, read_only=False)
    after = _snapshot(con)
    for table, rows in after.items():
        assert not [r for r in rows if _mentions(r, pw.ALICE_STRINGS)], table
    # Everybody else keeps every row (the register, audit log, suppressions and batch counts aside).
    bookkeeping = {"privacy_requests", "audit_log", "suppression_list", "ingest_batches"}
    # Her ledger events, known in consent_state_seen by event id alone.
    her_events = {r[0] for r in before.get("consent_events", set()) if _mentions(r, pw.ALICE_STRINGS)}
    for table, rows in before.items():
        if table not in bookkeeping:
            others = {r for r in rows if not _mentions(r, pw.ALICE_STRINGS) and world.alice not in r}
            if table == "consent_state_seen":
                others = {r for r in others if r[0] not in her_events}
            assert others <= after[table], table
    assert her_events and not her_events & {r[0] for r in after.get("consent_state_seen", set())}
    # Bob, who shares her landline, keeps it on his CRM contact and his receipt.
    bob_phones = con.execute(
        "SELECT source_record_id FROM stg_records WHERE phone_e164 = ? ORDER BY 1", [pw.LANDLINE_E164]
    ).fetchall()
    assert bob_phones == [("C-BOB-2",), ("T-2",)]
    assert con.execute("SELECT count(*) FROM raw_consent WHERE consent_id = 'K-3'").fetchall()[0][0] == 1
    # Bytes: not in the rewritten file, no WAL; the control (Bob's email) shows the grep can see strings.
    data = pw.file_bytes(world.settings.db_path)
    assert [s for s in pw.ALICE_STRINGS if s in data] == []
    assert pw.BOB_EMAIL in data
    assert not Path(f"{world.settings.db_path}.wal").exists()
    assert not list(world.settings.db_path.parent.glob("*.rewrite*"))
    assert stat.S_IMODE(os.stat(world.settings.db_path).st_mode) == 0o600
    assert report.rewritten and report.free_blocks == 0
    # Suppression: her exclusive identifiers, hashed as ingestion checks them; never the landline.
    secret = load_secret(world.settings.secret_path)
    hashes = set(con.execute("SELECT identifier_type, identifier_hash FROM suppression_list").fetchall())
    for id_type, value in (
        ("email_key", "alicesmith@gmail.com"), ("user_id", "U-ALICE-9"), ("loyalty_id", "L-ALICE-77"),
        ("crm_id", "C-ALICE-1"), ("anonymous_id", "ck-alice-1"), ("device_id", "dev-alice-1"),
        ("phone_e164", "+447700900461"), ("email_key", "alice.old@yahoo.co.uk"),  # from the older version
    ):  # fmt: skip
        assert (id_type, identifier_hash(secret, id_type, value)) in hashes
    assert ("phone_e164", identifier_hash(secret, "phone_e164", pw.LANDLINE_E164)) not in hashes
    # The register: completed, counted, and the batch ledger still adds up.
    status, affected = con.execute("SELECT status, records_affected FROM privacy_requests").fetchall()[0]
    assert status == "completed" and affected == sum(report.deleted.values()) > 0
    unbalanced = con.execute(
        "SELECT count(*) FROM ingest_batches WHERE rows_in <> rows_loaded + rows_quarantined + rows_suppressed"
    ).fetchall()[0][0]
    assert unbalanced == 0
    loaded = dict(con.execute("SELECT batch_id, rows_loaded FROM ingest_batches").fetchall())
    for source in ("web", "app", "store", "crm", "consent"):
        for batch_id, n in con.execute(f"SELECT batch_id, count(*) FROM raw_{source} GROUP BY 1").fetchall():
            assert loaded[batch_id] == n
    con.close()
    # The receipt names the export that held her; the platform's own copy no longer holds her.
    assert [e["export_id"] for e in report.plan.exports] and "removed" in report.plan.exports[0]["copy"]
    assert b"alice" not in world.export_path.read_bytes().lower()
    assert pw.BOB_EMAIL in world.export_path.read_bytes()
    # No file the platform wrote (database, exports, secrets; the inbox aside) holds her email.
    for path in world.settings.home.rglob("*"):
        if path.is_file():
            assert b"alice" not in path.read_bytes().lower(), path


def test_reingesting_the_upstream_files_brings_none_of_the_subject_back(
    world: Any, pw: SimpleNamespace, tmp_path: Path
) -> None:
    erasure.erase(world.settings, ALICE, dry_run=False)
    # The same files again (skipped: same content), and a re-export of every source under a new name with
    # one new row for Dave, so that each file is new content and goes through suppression.
    dave = {
        "crm/contacts.csv": "C-DAVE-4,Dave,New,dave.new@fastmail.co.uk,,,,,,,,,,\n",
        "crm/contacts_2024.csv": "C-DAVE-4,Dave,New,dave.new@fastmail.co.uk,,,,,2024-01-01T00:00:00Z,\n",
        "store/receipts.csv": "T-5,2025-03-05T12:00:00Z,S1,,dave.new@fastmail.co.uk,,Dave,New,,1.00,GBP,1\n",
        "web/events.csv": "W-6,2025-04-06T09:00:00Z,ck-dave-1,,dave.new@fastmail.co.uk,page_view,/\n",
        "app/events.csv": "A-4,2025-05-06T08:00:00Z,dev-dave-1,,dave.new@fastmail.co.uk,,app_open,ios\n",
        "consent/events.csv": "K-5,2025-02-05T00:00:00Z,email_marketing,granted,crm,v1,dave.new@fastmail.co.uk,,,\n",
    }
    pw.write_inbox(
        world.inbox, {name.replace(".csv", "_again.csv"): text + dave[name] for name, text in pw.INBOX.items()}
    )
    con = connect(world.settings.db_path)
    counts = pw.run_pipeline(con, world.settings, world.inbox)
    # Her rows: 2 CRM versions, store receipt, 2 web + 2 app events, consent; the rows without a time and
    # the malformed CSV line that carries her email too.
    assert counts["suppressed"] == 11
    for table in ("raw_crm", "raw_store", "raw_web", "raw_app", "raw_consent", "stg_records", "quarantine"):
        rows = con.execute(f"SELECT * FROM {table}").fetchall()
        assert not [r for r in rows if _mentions(tuple(r), pw.ALICE_STRINGS)], table
    history = "SELECT count(*) FROM customer_id_history WHERE ? IN (old_customer_id, new_customer_id)"
    assert con.execute(history, [world.alice]).fetchall()[0][0] == 0  # her id is not even retired
    assert con.execute("SELECT count(*) FROM customer_source_records WHERE source_record_id = 'T-2'").fetchall()[0][0]
    # Dave, new in every source, came in everywhere.
    dave_rows = con.execute("SELECT count(*) FROM stg_records WHERE email = 'dave.new@fastmail.co.uk'").fetchall()
    assert dave_rows[0][0] == 4
    con.close()


def test_a_reingested_malformed_line_carrying_the_subject_is_suppressed_too(world: Any, pw: SimpleNamespace) -> None:
    erasure.erase(world.settings, ALICE, dry_run=False)
    pw.write_inbox(
        world.inbox, {"web/events_again.csv": pw.INBOX["web/events.csv"] + "W-9,2025-04-09T09:00:00Z,ck-z,,,,/\n"}
    )
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    rows = con.execute("SELECT raw FROM quarantine").fetchall()
    con.close()
    assert not [r for r in rows if _mentions(tuple(r), pw.ALICE_STRINGS)]


def test_an_identifier_shared_by_a_household_erases_nobody(world: Any, pw: SimpleNamespace) -> None:
    landline = Subject.from_options(None, pw.LANDLINE, None)
    con = connect(world.settings.db_path)
    before = _snapshot(con)
    with pytest.raises(CdpError, match="links 2 customers"):
        erasure.erase(world.settings, landline, dry_run=False, con=con)
    con = connect(world.settings.db_path)
    after = _snapshot(con)
    con.close()
    changed = {t for t in after if after[t] != before.get(t)}
    # Only the register (and possibly its audit line) changed; the world's export already created audit_log.
    assert "privacy_requests" in changed and changed <= {"privacy_requests", "audit_log"}


def test_every_table_of_the_store_and_of_the_code_is_covered_by_the_erasure_map(world: Any) -> None:
    from consent.restriction import ensure_restrictions

    con = connect(world.settings.db_path)
    ensure_restrictions(con)
    erasure.register.ensure_register_schema(con)
    assert uncovered_tables(con) == []
    con.close()
    # Every persistent table any module creates, found in the source, is in the map or kept on purpose.
    root = Path(__file__).resolve().parents[3]
    pattern = re.compile(
        r"CREATE\s+(?:OR\s+REPLACE\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?!IF\b)([A-Za-z_][\w.]*)", re.I
    )
    created = set()
    elsewhere = {root / "cdp" / "users.py"}  # console users live in their own SQLite file, not in the store
    for package in ("cdp", "identity", "consent", "pipelines"):
        for path in set((root / package).rglob("*.py")) - elsewhere:
            text = path.read_text()
            created |= {m.group(1) for m in pattern.finditer(text) if not m.group(1).startswith("_")}
            created |= set(re.findall(r'create_table_as\(\s*con,\s*"(\w+)"', text))  # cdp.store.create_table_as
    # identity.model's Splink session tables live in a separate in-memory database, never in the store.
    created -= {"person_units", "prior_units", "scored_pairs", "kept_pairs", "ambiguous_units"}
    created -= {"u"}  # a doctest table in identity.evaluate
    assert created, "the scan found no tables: the pattern is broken"
    assert sorted(created - set(ERASURE_MAP) - set(KEPT_TABLES)) == []


def test_a_table_the_map_does_not_cover_stops_erasure_before_anything_happens(world: Any) -> None:
    con = connect(world.settings.db_path)
    con.execute("CREATE TABLE marketing_copy AS SELECT * FROM customer_profiles")
    with pytest.raises(CdpError, match="marketing_copy"):
        erasure.erase(world.settings, ALICE, dry_run=False, con=con)
    con = connect(world.settings.db_path)
    assert con.execute("SELECT count(*) FROM privacy_requests").fetchall()[0][0] == 0
    assert con.execute("SELECT count(*) FROM raw_crm WHERE crm_id = 'C-ALICE-1'").fetchall()[0][0] == 2
    con.close()


def test_a_request_while_another_process_holds_the_store_fails_in_one_line_with_nothing_done(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, duckdb
            con = duckdb.connect({str(world.settings.db_path)!r})
            con.execute("BEGIN TRANSACTION")  # a pipeline run mid-write
            con.execute("UPDATE ingest_batches SET status = status")
            print("holding", flush=True)
            sys.stdin.readline()
            con.execute("ROLLBACK")
            con.close()
        """)],  # fmt: skip
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        monkeypatch.setenv("CDP_HOME", str(world.settings.home))
        result = CliRunner().invoke(
            privacy_cli.app, ["erase", "--email", "alice.smith@gmail.com", "--yes", "--db", str(world.settings.db_path)]
        )
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "in use by another process" in lines[0]
        assert "alice" not in result.output.lower()
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    con = connect(world.settings.db_path)
    # Not even the register was touched (the world's export created the table, but no request is in it).
    assert con.execute("SELECT count(*) FROM privacy_requests").fetchall()[0][0] == 0
    assert con.execute("SELECT count(*) FROM raw_crm WHERE crm_id = 'C-ALICE-1'").fetchall()[0][0] == 2
    con.close()


def test_the_cli_dry_run_then_erase_prints_counts_and_a_receipt_without_identifiers(
    world: Any, pw: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    db = ["--db", str(world.settings.db_path)]
    dry = CliRunner().invoke(privacy_cli.app, ["erase", "--email", "Alice.Smith+x@gmail.com", "--dry-run", *db])
    assert dry.exit_code == 0, dry.output
    assert world.alice in dry.output and "raw_crm: 2" in dry.output and "nothing erased" in dry.output
    request_id = re.search(r"request (PR-\S+)", dry.output).group(1)  # type: ignore[union-attr]
    done = CliRunner().invoke(privacy_cli.app, ["erase", "--email", "Alice.Smith+x@gmail.com", "--yes", *db])
    assert done.exit_code == 0, done.output
    assert f"erasure receipt request {request_id}" in done.output  # the dry run's request, completed
    assert "database file rewritten" in done.output and "all_customers" in done.output
    assert not [s for s in pw.ALICE_STRINGS if s.decode().lower() in (dry.output + done.output).lower()]
    listing = CliRunner().invoke(privacy_cli.app, ["requests", *db])
    assert request_id in listing.output and "completed" in listing.output and "0 overdue" in listing.output


def _erase_alice_until_the_file_rewrite(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Erase Alice, the process dying as the database file is to be rewritten (her rows gone, bytes not)."""
    real_rewrite = erasure.rewrite_database

    def crash(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
        con.close()
        raise OSError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(erasure, "rewrite_database", crash)
        with pytest.raises(OSError):
            erasure.erase(world.settings, ALICE, dry_run=False, con=_open(world))
    assert erasure.rewrite_database is real_rewrite


def test_an_interrupted_file_rewrite_is_finished_by_the_next_request(
    world: Any, pw: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _erase_alice_until_the_file_rewrite(world, monkeypatch)
    con = connect(world.settings.db_path)
    assert con.execute("SELECT status FROM privacy_requests").fetchall() == [("rewrite_pending",)]
    assert con.execute("SELECT count(*) FROM raw_crm WHERE crm_id = 'C-ALICE-1'").fetchall()[0][0] == 0
    con.close()
    assert pw.ALICE_STRINGS[0] in pw.file_bytes(world.settings.db_path)  # rows gone, bytes not yet
    assert world.alice not in world.export_path.read_text()  # the platform's export copy went first

    erasure.erase(world.settings, Subject("customer_id", world.carol), dry_run=True)  # any next request
    assert [s for s in pw.ALICE_STRINGS if s in pw.file_bytes(world.settings.db_path)] == []
    con = connect(world.settings.db_path)
    statuses = con.execute("SELECT kind, status FROM privacy_requests ORDER BY received_at").fetchall()
    con.close()
    assert statuses == [("erasure", "completed"), ("erasure", "open")]


def test_a_pipeline_run_launched_from_dagster_finishes_an_interrupted_erasure_first(
    world: Any, pw: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Dagster UI or a schedule launches the job directly, without ``cdp run``'s own check first."""
    from pipelines.run import run_pipeline

    _erase_alice_until_the_file_rewrite(world, monkeypatch)
    outcome = run_pipeline(world.settings, world.inbox, echo=lambda _m: None, instance=dg.DagsterInstance.ephemeral())
    assert outcome.success, outcome.failure
    assert [s for s in pw.ALICE_STRINGS if s in pw.file_bytes(world.settings.db_path)] == []
    con = connect(world.settings.db_path)
    assert con.execute("SELECT status FROM privacy_requests").fetchall() == [("completed",)]
    con.close()


def test_a_withdrawal_naming_her_email_and_his_account_still_keeps_him_out_after_she_is_erased(
    world: Any, pw: SimpleNamespace
) -> None:
    """One consent event names Alice's email and Bob's user id: it withdraws for both. Erasing Alice removes her
    email from it and keeps it for Bob, who must stay out of email exports (deleting it exported him again)."""
    from consent import enforce

    pw.write_inbox(
        world.inbox,
        {
            "consent/late.csv": "consent_id,event_time,purpose,status,source,email,user_id\n"
            f"K-9,2025-03-01T00:00:00Z,email_marketing,withdrawn,crm,{pw.ALICE_EMAIL},U-BOB-3\n"
        },
    )
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    allowed = set(enforce.approve(con, "email_marketing").rows["customer_id"])
    assert world.bob not in allowed and world.alice not in allowed
    con.close()

    # Her access document holds the event, without his account.
    from consent.access import access

    access(world.settings, ALICE, world.settings.home / "alice.json")
    doc = json.loads((world.settings.home / "alice.json").read_text())
    (received,) = [e for e in doc["consent_received"] if e["consent_id"] == "K-9"]
    assert received["email"] == pw.ALICE_EMAIL and received["user_id"] == "(another person's identifier)"
    assert "U-BOB-3" not in json.dumps(doc)

    plan = erasure.erase(world.settings, ALICE, dry_run=True).plan
    assert plan.scope.shared_consent_events == 1
    erasure.erase(world.settings, ALICE, dry_run=False)

    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)  # the next run: consent state from the ledger as it is now
    assert world.bob not in set(enforce.approve(con, "email_marketing").rows["customer_id"])
    for table in ("raw_consent", "stg_consent", "consent_events"):
        kept = con.execute(f"SELECT email, user_id FROM {table} WHERE consent_id = 'K-9'").fetchall()
        assert kept == [(None, "U-BOB-3")], table
    assert con.execute("SELECT count(*) FROM consent_events WHERE consent_id = 'K-1'").fetchall()[0][0] == 0
    con.close()
    assert [s for s in pw.ALICE_STRINGS if s in pw.file_bytes(world.settings.db_path)] == []


def test_her_email_after_a_display_name_and_her_phone_with_a_note_are_suppressed_after_erasure(
    world: Any, pw: SimpleNamespace
) -> None:
    """Written as mail clients and forms hand them over, her identifiers used to read as no identifier at all:
    neither suppressed at ingestion nor found by a second erasure. A withdrawal written so reached nobody."""
    erasure.erase(world.settings, ALICE, dry_run=False)
    receipts = "transaction_id,transaction_time,store_id,email,phone,amount\n"
    receipts += f"T-70,2025-05-01T12:00:00Z,S1,Alice Smith <{pw.ALICE_EMAIL}>,,3.00\n"
    receipts += f'T-71,2025-05-01T12:00:00Z,S1,"{pw.ALICE_EMAIL}".,,3.00\n'
    consent = "consent_id,event_time,purpose,status,source,email\n"
    consent += "K-10,2025-06-01T00:00:00Z,email_marketing,withdrawn,crm,Carol Jones <carol.jones@yahoo.co.uk>\n"
    pw.write_inbox(world.inbox, {"store/forms.csv": receipts, "consent/forms.csv": consent})
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    from consent import enforce

    assert con.execute(
        "SELECT rows_loaded, rows_suppressed FROM ingest_batches WHERE file LIKE '%store/forms.csv'"
    ).fetchall() == [(0, 2)]
    assert world.carol not in set(enforce.approve(con, "email_marketing").rows["customer_id"])
    con.close()


def test_a_resent_copy_of_her_receipt_without_identifiers_stays_out(world: Any, pw: SimpleNamespace) -> None:
    """The till exports her receipt again with her name and no identifier: known by store and number, it is
    suppressed. Another store's receipt with the same number is someone else's and loads."""
    report = erasure.erase(world.settings, ALICE, dry_run=False)
    assert report.suppressed.get("store_receipt") == 1  # T-1 at S1
    header = "transaction_id,transaction_time,store_id,first_name,last_name,amount\n"
    resent = {
        "store/resent-1.csv": header + "T-1,2025-03-01T12:00:00Z,S1,Alice,Smith,25.00\n",
        "store/resent-2.csv": header + "T-1,2025-03-05T12:00:00Z,S9,Dan,Other,9.00\n",
    }
    pw.write_inbox(world.inbox, resent)
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    assert con.execute(
        "SELECT rows_loaded, rows_suppressed FROM ingest_batches WHERE file LIKE '%store/resent-%' ORDER BY file"
    ).fetchall() == [(0, 1), (1, 0)]
    assert con.execute("SELECT store_id FROM raw_store WHERE transaction_id = 'T-1'").fetchall() == [("S9",)]
    con.close()


def test_her_resent_receipt_does_not_hold_its_number_against_another_store_in_the_same_file(
    world: Any, pw: SimpleNamespace
) -> None:
    """Within one file, the suppressed copy of her receipt used to count as the number's first owner, so the
    other store's receipt of that number was quarantined as a reused key."""
    erasure.erase(world.settings, ALICE, dry_run=False)
    header = "transaction_id,transaction_time,store_id,first_name,last_name,amount\n"
    rows = "T-1,2025-03-01T12:00:00Z,S1,Alice,Smith,25.00\nT-1,2025-03-05T12:00:00Z,S9,Dan,Other,9.00\n"
    pw.write_inbox(world.inbox, {"store/resent.csv": header + rows})
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    assert con.execute(
        "SELECT rows_loaded, rows_quarantined, rows_suppressed FROM ingest_batches WHERE file LIKE '%store/resent.csv'"
    ).fetchall() == [(1, 0, 1)]
    assert con.execute("SELECT store_id FROM raw_store WHERE transaction_id = 'T-1'").fetchall() == [("S9",)]
    con.close()


def test_her_email_among_others_in_one_field_or_in_angle_quotes_is_suppressed_after_erasure(
    world: Any, pw: SimpleNamespace
) -> None:
    """Her address next to another in one field, inside a JSON list or object of a consent line, or in the
    angle quotes of another keyboard used to be loaded, neither suppressed nor hers to a second erasure. A
    field naming several people's addresses is quarantined; one naming hers is suppressed."""
    erasure.erase(world.settings, ALICE, dry_run=False)
    receipts = "transaction_id,transaction_time,store_id,email,phone,amount\n"
    receipts += f'T-80,2025-05-01T12:00:00Z,S1,"{pw.ALICE_EMAIL}, dan@example.org",,3.00\n'
    receipts += f"T-81,2025-05-01T12:00:00Z,S1,\u2039{pw.ALICE_EMAIL}\u203a,,3.00\n"
    receipts += 'T-82,2025-05-01T12:00:00Z,S1,"dan@example.org; eve@example.org",,3.00\n'
    receipts += f'T-83,2025-05-01T12:00:00Z,S1,"dan@example.org\n{pw.ALICE_EMAIL}",,3.00\n'  # a multi-line cell
    event = {"event_time": "2025-06-01T00:00:00Z", "purpose": "email_marketing", "status": "granted"}
    consent = "\n".join(
        json.dumps({**event, "consent_id": cid, "email": email})
        for cid, email in [
            ("K-20", [pw.ALICE_EMAIL, "dan@example.org"]),
            ("K-21", {"home": pw.ALICE_EMAIL}),
            ("K-22", ["dan@example.org"]),
        ]
    )
    pw.write_inbox(world.inbox, {"store/lists.csv": receipts, "consent/lists.jsonl": consent + "\n"})
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    counts = con.execute(
        "SELECT source, rows_loaded, rows_quarantined, rows_suppressed FROM ingest_batches "
        "WHERE file LIKE '%/lists.%' ORDER BY 1"
    ).fetchall()
    assert counts == [("consent", 1, 0, 2), ("store", 0, 1, 3)]
    assert con.execute("SELECT reason FROM quarantine WHERE source = 'store'").fetchall()[-1] == (
        "email names several addresses",
    )
    con.close()
    assert [s for s in pw.ALICE_STRINGS if s in pw.file_bytes(world.settings.db_path)] == []


def test_a_field_naming_her_and_another_loaded_by_an_earlier_release_is_erased(world: Any, pw: SimpleNamespace) -> None:
    """A release before such fields were quarantined loaded them: erasure finds her address among the others."""
    con = connect(world.settings.db_path)
    con.execute(
        "INSERT INTO raw_store (transaction_id, transaction_time, store_id, email, batch_id, file, row_number) "
        "VALUES ('T-90', TIMESTAMP '2025-05-01 12:00:00', 'S1', ?, 'old', 'store/old.csv', 1)",
        [f"dan@example.org / {pw.ALICE_EMAIL}"],
    )
    con.close()
    erasure.erase(world.settings, ALICE, dry_run=False)
    con = connect(world.settings.db_path)
    assert con.execute("SELECT count(*) FROM raw_store WHERE transaction_id = 'T-90'").fetchall() == [(0,)]
    con.close()


def test_a_new_withdrawal_naming_her_and_him_after_her_erasure_keeps_him_out_without_her_values(
    world: Any, pw: SimpleNamespace
) -> None:
    """After Alice is erased, a withdrawal arrives naming her (recycled) mobile and Bob's email. Suppressed
    whole, it took Bob's withdrawal with it and he stayed in email exports. It now loads without her number;
    a grant naming both stays suppressed (no event, no consent)."""
    from consent import enforce

    erasure.erase(world.settings, ALICE, dry_run=False)
    consent = "consent_id,event_time,purpose,status,source,email,phone\n"
    consent += f"K-40,2025-07-01T00:00:00Z,email_marketing,withdrawn,store_form,{BOB},07700 900461\n"
    consent += f"K-41,2025-07-02T00:00:00Z,sms_marketing,granted,store_form,{BOB},07700 900461\n"
    # Without her number, nothing readable is left: quarantined, not loaded to reach nobody.
    consent += "K-42,2025-07-03T00:00:00Z,email_marketing,withdrawn,store_form,n/a,07700 900461\n"
    pw.write_inbox(world.inbox, {"consent/recycled.csv": consent})
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    assert con.execute(
        "SELECT rows_loaded, rows_quarantined, rows_suppressed FROM ingest_batches WHERE file LIKE '%recycled.csv'"
    ).fetchall() == [(1, 1, 1)]
    (raw,) = con.execute("SELECT raw FROM quarantine WHERE reason = 'no readable subject identifier'").fetchall()[0]
    assert json.loads(raw)["consent_id"] == "K-42" and json.loads(raw)["phone"] is None
    assert con.execute("SELECT consent_id, email, phone FROM raw_consent WHERE consent_id LIKE 'K-4_'").fetchall() == [
        ("K-40", BOB, None)
    ]
    assert world.bob not in set(enforce.approve(con, "email_marketing").rows["customer_id"])
    con.close()
    assert [s for s in pw.ALICE_STRINGS if s in pw.file_bytes(world.settings.db_path)] == []


def test_with_the_key_lost_an_erased_subject_is_not_ingested_again(world: Any, pw: SimpleNamespace) -> None:
    """A new key would match none of the suppressed hashes: the run and the privacy commands stop instead."""
    from pipelines.run import run_pipeline

    erasure.erase(world.settings, ALICE, dry_run=False)
    world.settings.secret_path.unlink()  # the home folder lost or not restored with the store
    again = f"crm_id,first_name,last_name,email\nC-ALICE-9,Alice,Smith,{pw.ALICE_EMAIL}\n"
    pw.write_inbox(world.inbox, {"crm/again.csv": again})
    outcome = run_pipeline(world.settings, world.inbox, echo=lambda _m: None, instance=dg.DagsterInstance.ephemeral())
    assert not outcome.success and "the suppression key of this store is missing" in str(outcome.failure)
    with pytest.raises(CdpError, match="the suppression key of this store is missing"):
        erasure.erase(world.settings, Subject("customer_id", world.bob), dry_run=True)
    assert not world.settings.secret_path.exists()
    con = connect(world.settings.db_path)
    assert con.execute("SELECT count(*) FROM raw_crm WHERE crm_id = 'C-ALICE-9'").fetchall()[0][0] == 0
    con.close()


def test_placeholders_and_shared_values_are_neither_swept_nor_suppressed(tmp_path: Path) -> None:
    """On hand-made tables: the subject's device id is a placeholder, her phone is also a stranger's, and a
    web event staged after the last identity run (no customer yet) carries her email."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE stg_records (source VARCHAR, source_record_id VARCHAR, unit_id VARCHAR, email_key VARCHAR, "
        "phone_e164 VARCHAR, user_id VARCHAR, loyalty_id VARCHAR, crm_id VARCHAR, device_id VARCHAR, "
        "anonymous_id VARCHAR)"
    )
    con.execute(
        """INSERT INTO stg_records VALUES
           ('crm', 'c1', 'crm:c1', 'sub@mail.test', '+441134960000', NULL, NULL, 'c1', NULL, NULL),
           ('app', 'a1', 'app:-1', NULL, NULL, NULL, NULL, NULL, '-1', NULL),
           ('crm', 'c2', 'crm:c2', 'other@mail.test', '+441134960000', NULL, NULL, 'c2', NULL, NULL),
           ('web', 'w9', 'web:ck9', 'sub@mail.test', NULL, NULL, NULL, NULL, NULL, 'ck9')"""
    )
    con.execute("CREATE TABLE customer_source_records (source VARCHAR, source_record_id VARCHAR, customer_id VARCHAR, "
                "unit_id VARCHAR)")  # fmt: skip
    con.execute("INSERT INTO customer_source_records VALUES ('crm', 'c1', 'S', 'crm:c1'), ('app', 'a1', 'S', 'app:-1'),"
                " ('crm', 'c2', 'O', 'crm:c2')")  # fmt: skip
    scope = erasure.find_subject(con, Subject("email_key", "sub@mail.test"))
    flags = con.execute(
        "SELECT identifier_type, exclusive, placeholder, usable FROM _subject_ids ORDER BY 1"
    ).fetchall()
    assert flags == [
        ("crm_id", True, False, True), ("device_id", True, True, False),
        ("email_key", True, False, True), ("phone_e164", False, False, False),
    ]  # fmt: skip
    assert scope.customers == ["S"] and scope.identifier_types["phone_e164"]["shared"] == 1
    assert scope.records_by_source == {"app": 1, "crm": 1, "web": 1}  # the unresolved event is hers


def test_without_yes_the_cli_asks_and_a_no_erases_nothing(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    args = ["erase", "--customer-id", world.alice, "--db", str(world.settings.db_path)]
    result = CliRunner().invoke(privacy_cli.app, args, input="n\n")
    assert result.exit_code == 1 and "not erased; request PR-" in result.output and "stays open" in result.output
    con = connect(world.settings.db_path)
    assert con.execute("SELECT status FROM privacy_requests").fetchall() == [("open",)]
    assert con.execute("SELECT count(*) FROM customer_profiles WHERE customer_id = ?", [world.alice]).fetchall() == [
        (1,)
    ]
    con.close()
    result = CliRunner().invoke(privacy_cli.app, args, input="y\n")
    assert result.exit_code == 0 and "erasure receipt" in result.output


def test_rows_ingested_but_not_staged_yet_are_erased_and_do_not_come_back(world: Any, pw: SimpleNamespace) -> None:
    """A run that failed after ingestion leaves raw rows no staged record leads to: erasure by email still
    finds them (a CRM contact, and an app line cut short in quarantine), with the ids they carry."""
    from cdp.ingest import Ingestor

    dana = (b"dana.new@fastmail.co.uk", b"C-DANA-8", b"07700 900555", b"dev-dana-1", b"7700-900555", b"K-DANA-1")
    pw.write_inbox(
        world.inbox,
        {
            "crm/late.csv": "crm_id,first_name,last_name,email,phone\n"
            "C-DANA-8,Dana,New,Dana.New@fastmail.co.uk,07700 900555\n",
            "app/late.jsonl": '{"event_id": "A-8", "event_time": "2025-05-03T08:00:00Z", "device_id": "dev-dana-1", '
            '"email": "dana.new@fastmail.co.uk",\n',
            # Her consent, and a receipt with her phone in a spelling no staged record has.
            "consent/late.csv": "consent_id,event_time,purpose,status,source,email\n"
            "K-DANA-1,2025-05-04T08:00:00Z,email_marketing,granted,web_banner,DANA.NEW@fastmail.co.uk\n",
            "store/late.csv": "transaction_id,transaction_time,store_id,phone,amount\n"
            "T-DANA-1,2025-05-04T09:00:00Z,S1,+44 (0) 7700-900555,4.00\n",
        },
    )
    con = _open(world)
    Ingestor(con, load_secret(world.settings.secret_path), "GB").ingest_inbox(world.inbox)  # not staged
    con.close()
    assert dana[0] in pw.file_bytes(world.settings.db_path)

    report = erasure.erase(world.settings, Subject.from_options("dana.new@fastmail.co.uk", None, None), dry_run=False)

    assert report.deleted.get("raw_crm") == 1 and report.deleted.get("quarantine") == 1
    assert report.deleted.get("raw_consent") == 1 and report.deleted.get("raw_store") == 1
    data = pw.file_bytes(world.settings.db_path).lower()
    assert not [s for s in dana if s.lower() in data]
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)  # the same files again, and staging
    rows = _snapshot(con)
    con.close()
    assert not [t for t, r in rows.items() for row in r if _mentions(row, dana)]


def test_a_customer_id_nobody_has_is_refused_before_any_request_is_registered(world: Any) -> None:
    con = connect(world.settings.db_path)
    before = con.execute("SELECT count(*) FROM privacy_requests").fetchall()[0][0]
    con.close()
    for dry_run in (True, False):
        with pytest.raises(CdpError, match=r"^cus_999999999: no current or former customer has this id"):
            erasure.erase(world.settings, Subject.from_options(None, None, "cus_999999999"), dry_run=dry_run)
    con = connect(world.settings.db_path)
    assert con.execute("SELECT count(*) FROM privacy_requests").fetchall()[0][0] == before
    con.close()


def test_every_version_of_the_subjects_ledger_events_is_erased(world: Any, pw: SimpleNamespace) -> None:
    """A consent row and an app push event re-sent with other content are later versions in the ledger
    (``consent:K-1@...``, ``app:A-9@...``); erasure reaches them like the first ones."""
    header = "event_id,event_time,device_id,user_id,email,phone,event_type,platform\n"
    pw.write_inbox(
        world.inbox,
        {
            "consent/resent.csv": "consent_id,event_time,purpose,status,source,policy_version,email\n"
            f"K-1,2025-03-01T00:00:00Z,email_marketing,withdrawn,crm,v1,{pw.ALICE_EMAIL}\n",
            "app/push.csv": header + "A-9,2025-05-03T08:00:00Z,dev-alice-1,,,,push_opt_in,ios\n",
        },
    )
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    pw.write_inbox(
        world.inbox, {"app/push-2.csv": header + "A-9,2025-05-04T08:00:00Z,dev-alice-1,,,,push_opt_out,ios\n"}
    )
    pw.run_pipeline(con, world.settings, world.inbox)
    versions = "SELECT event_id FROM consent_events WHERE event_id LIKE 'consent:K-1@%' OR event_id LIKE 'app:A-9@%'"
    assert len(con.execute(versions).fetchall()) == 2
    con.close()

    erasure.erase(world.settings, ALICE, dry_run=False)

    con = connect(world.settings.db_path)
    for table in ("consent_events", "consent_state_seen"):
        left = con.execute(
            f"SELECT event_id FROM {table} WHERE event_id LIKE 'consent:K-1%' OR event_id LIKE 'app:A-%'"
        ).fetchall()
        assert left == [], table
    con.close()


def test_what_a_killed_export_left_in_the_export_folder_loses_the_subject_too(world: Any) -> None:
    """An export killed after writing its file but before recording it, or while writing its temporary file:
    neither is in the register, and erasure still reaches them."""
    unregistered = world.settings.exports_dir / "web" / "all_customers-email_marketing-killed.csv"
    unregistered.parent.mkdir(parents=True, exist_ok=True)
    unregistered.write_text(world.export_path.read_text())
    temporary = world.settings.exports_dir / f".{world.export_path.name}.0123456789abcdef.tmp"
    temporary.write_text(world.export_path.read_text())
    assert world.alice in unregistered.read_text()

    erasure.erase(world.settings, ALICE, dry_run=False)

    assert world.alice not in unregistered.read_text() and world.bob in unregistered.read_text()
    assert not temporary.exists()


def test_listing_the_requests_finishes_an_interrupted_erasure_first(
    world: Any, pw: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _erase_alice_until_the_file_rewrite(world, monkeypatch)
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    listed = CliRunner().invoke(privacy_cli.app, ["requests", "--db", str(world.settings.db_path)])
    assert listed.exit_code == 0, listed.output
    assert "completed" in listed.output and "rewrite_pending" not in listed.output
    assert [s for s in pw.ALICE_STRINGS if s in pw.file_bytes(world.settings.db_path)] == []


def test_an_erasure_names_the_access_documents_written_for_the_subject_then_forgets_them(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies of the subject's data the platform wrote (access documents) are named on the dry run and the
    receipt, for the officer to delete; another customer's document is not; then their rows go too (the file
    name the officer chose may name the subject)."""
    from consent.access import access

    alice_doc = tmp_path / "request-alice.json"
    access(world.settings, ALICE, alice_doc)
    access(world.settings, Subject.from_options(None, None, world.bob), tmp_path / "request-bob.json")
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    db = ["--db", str(world.settings.db_path)]
    dry = CliRunner().invoke(privacy_cli.app, ["erase", "--email", "Alice.Smith+x@gmail.com", "--dry-run", *db])
    assert dry.exit_code == 0, dry.output
    out = " ".join(dry.output.split())
    assert "access documents written earlier for the subject (1), to delete where kept:" in out
    assert "request-alice.json (present)" in out and "request-bob.json" not in out
    done = CliRunner().invoke(privacy_cli.app, ["erase", "--email", "Alice.Smith+x@gmail.com", "--yes", *db])
    assert done.exit_code == 0, done.output
    assert "request-alice.json (present)" in " ".join(done.output.split())
    con = connect(world.settings.db_path)
    documents = con.execute("SELECT file FROM access_documents").fetchall()
    members = con.execute("SELECT customer_id FROM access_document_members").fetchall()
    con.close()
    assert [Path(f).name for (f,) in documents] == ["request-bob.json"] and members == [(world.bob,)]


def test_after_an_erasure_the_landline_she_shared_reaches_bob_only_and_requests_by_it_are_refused(
    world: Any, pw: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice shared her landline with Bob: her erasure keeps it for him. A later request by that landline
    (say Alice asking again) would reach Bob alone, as if it were his: erasure, access and restriction by it
    are refused and the officer names the customer; the dry run says why. By customer id, Bob is reachable."""
    from consent.access import access
    from consent.restriction import restrict

    erasure.erase(world.settings, Subject.from_options(None, None, world.alice), dry_run=False, con=_open(world))
    landline = Subject.from_options(None, pw.LANDLINE, None)
    with pytest.raises(CdpError, match=r"was shared with another customer when request PR-\S+ erased them"):
        erasure.erase(world.settings, landline, dry_run=False, con=_open(world))
    with pytest.raises(CdpError, match="name the customer with --customer-id"):
        access(world.settings, landline, tmp_path / "landline.json")
    with pytest.raises(CdpError, match="name the customer with --customer-id"):
        restrict(world.settings, landline)
    assert not (tmp_path / "landline.json").exists()
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    db = ["--db", str(world.settings.db_path)]
    dry = CliRunner().invoke(privacy_cli.app, ["erase", "--phone", pw.LANDLINE, "--dry-run", *db])
    assert dry.exit_code == 0, dry.output
    assert "was shared with another customer when request" in " ".join(dry.output.split())
    con = connect(world.settings.db_path)
    assert con.execute("SELECT count(*) FROM customer_profiles WHERE customer_id = ?", [world.bob]).fetchall() == [(1,)]
    con.close()
    access(world.settings, Subject.from_options(None, None, world.bob), tmp_path / "bob.json")  # by id: fine


_SPELLINGS = {
    # Jörg's CRM contact and receipt carry two spellings of one internationalised address (Unicode domain, its
    # ASCII form); the officer types a third; a later export writes it decomposed (o + combining diaeresis).
    "address-beyond-ascii": SimpleNamespace(
        files={
            "crm/joerg.csv": "crm_id,first_name,last_name,email,created_at,updated_at\n"
            "C-JOERG-7,Jörg,Müller,Jörg.Müller@Bücher.de,2025-01-05T10:00:00Z,2025-06-05T10:00:00Z\n",
            "store/joerg.csv": "transaction_id,transaction_time,store_id,email,amount,currency\n"
            "T-7,2025-03-07T12:00:00Z,S1,jörg.müller@xn--bcher-kva.de,9.00,GBP\n",
        },
        records=(("crm", "C-JOERG-7"), ("store", "T-7")),
        email="JÖRG.MÜLLER@BÜCHER.DE",
        hers=("müller".encode(), b"xn--bcher-kva", b"c-joerg-7", b"t-7,"),
        again=(
            "crm/joerg_again.csv",
            "crm_id,first_name,last_name,email,created_at,updated_at\n"
            "C-JOERG-8,J.,M.,jo\u0308rg.mu\u0308ller@bu\u0308cher.de,2025-07-01T10:00:00Z,2025-07-01T10:00:00Z\n",
            "C-JOERG-8",
        ),
    ),
    # Noor's card is on her CRM contact in capitals and on a receipt as the till clerk typed it; a later
    # receipt paid with the card is typed another way again.
    "loyalty-card-case": SimpleNamespace(
        files={
            "crm/noor.csv": "crm_id,first_name,last_name,email,loyalty_id,created_at,updated_at\n"
            "C-NOOR-5,Noor,Haddad,noor.haddad@example.net,LOY-NOOR-5,2025-01-05T10:00:00Z,2025-06-05T10:00:00Z\n",
            "store/noor.csv": "transaction_id,transaction_time,store_id,loyalty_id,amount,currency\n"
            "T-NOOR-1,2025-03-07T12:00:00Z,S1,loy-noor-5,9.00,GBP\n",
        },
        records=(("crm", "C-NOOR-5"), ("store", "T-NOOR-1")),
        email="noor.haddad@example.net",
        hers=(b"noor-5", b"haddad", b"t-noor-1"),
        again=(
            "store/noor_again.csv",
            "transaction_id,transaction_time,store_id,loyalty_id,amount,currency\n"
            "T-NOOR-2,2025-07-01T10:00:00Z,S2, Loy-Noor-5 ,4.00,GBP\n",
            "T-NOOR-2",
        ),
    ),
    # Ada's account id is a UUID: her CRM contact has it in lower case, her iPhone's app in capitals, with the
    # device's id as iOS writes it; a later web visit signs in with the account id in capitals again.
    "uuid-case": SimpleNamespace(
        files={
            "crm/ada.csv": "crm_id,first_name,last_name,email,user_id,created_at,updated_at\n"
            "C-ADA-3,Ada,Lovelace,ada.lovelace@example.com,0b1e4c2a-77d3-4f0e-9a51-3c2d9e8f7a10,"
            "2025-01-05T10:00:00Z,2025-06-05T10:00:00Z\n",
            "app/ada.csv": "event_id,event_time,device_id,user_id,event_type,platform\n"
            "E-ADA-1,2025-03-07T12:00:00Z,6F9619FF-8B86-D011-B42D-00C04FC964FF,0B1E4C2A-77D3-4F0E-9A51-3C2D9E8F7A10,"
            "login,ios\n",
        },
        records=(("crm", "C-ADA-3"), ("app", "E-ADA-1")),
        email="ada.lovelace@example.com",
        hers=(
            b"lovelace",
            b"0b1e4c2a-77d3-4f0e-9a51-3c2d9e8f7a10",
            b"6f9619ff-8b86-d011-b42d-00c04fc964ff",
            b"e-ada-1",
        ),
        again=(
            "web/ada_again.csv",
            "event_id,event_time,anonymous_id,user_id,event_type\n"
            "W-ADA-9,2025-07-01T10:00:00Z,cookie-ada-2,0B1E4C2A-77D3-4F0E-9A51-3C2D9E8F7A10,login\n",
            "W-ADA-9",
        ),
    ),
}


@pytest.mark.parametrize("case", list(_SPELLINGS))
def test_a_subject_is_erased_by_any_spelling_of_their_identifiers_and_stays_out(
    world: Any, pw: SimpleNamespace, case: str
) -> None:
    """The subject's records carry one identifier spelled two ways and link; the officer names the subject
    by email. Nothing of theirs stays in any file the platform wrote, and a later file bringing them back
    under a new record, spelled a third way, is suppressed on arrival."""
    spec = _SPELLINGS[case]
    for name, text in spec.files.items():
        (world.inbox / name).write_text(text, encoding="utf-8")
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    assert len({pw.customer_of(con, source, record) for source, record in spec.records}) == 1
    con.close()

    erasure.erase(world.settings, Subject.from_options(spec.email, None, None), dry_run=False)

    for path in world.settings.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes().lower()
            assert not [s for s in spec.hers if s in data], path
    name, text, key = spec.again
    (world.inbox / name).write_text(text, encoding="utf-8")
    con = connect(world.settings.db_path)
    counts = pw.run_pipeline(con, world.settings, world.inbox)
    assert counts["suppressed"] == 1
    source = name.split("/")[0]
    column = {"crm": "crm_id", "store": "transaction_id", "web": "event_id"}[source]
    assert con.execute(f"SELECT count(*) FROM raw_{source} WHERE {column} = ?", [key]).fetchall()[0][0] == 0
    con.close()


_FAMILY_CRM = "crm_id,first_name,last_name,email,phone,date_of_birth,city,postcode,country\n"


def _store_of(tmp_path: Path, pw: SimpleNamespace, *batches: dict[str, str]) -> Settings:
    """A store built by one pipeline run per batch of inbox files (later batches added to the same inbox)."""
    settings = Settings(db_path=tmp_path / "cdp.duckdb", home=tmp_path / "home", segments_dir=tmp_path / "segments")
    for files in batches:
        pw.write_inbox(tmp_path / "inbox", files)
        con = connect(settings.db_path)
        pw.run_pipeline(con, settings, tmp_path / "inbox")
        con.close()
    return settings


def test_an_older_version_of_another_customers_contact_is_theirs_not_the_subjects(
    tmp_path: Path, pw: SimpleNamespace
) -> None:
    """Ann and Bob both gave the family mailbox; Ann's contact then changed to her own address. Bob alone
    carries the mailbox now, but Ann's older contact (raw, key C1, her phone) still does: it is Ann's record,
    not Bob's. Bob's access document and erasure leave it alone, and the mailbox, shared, is not suppressed.
    A request by the mailbox reaches both of them, and is refused."""
    from consent.access import access

    settings = _store_of(
        tmp_path, pw,
        {"crm/c1.csv": _FAMILY_CRM
         + "C1,Ann,Lee,family.lee@mail.co.uk,07973 111222,1980-01-01,London,SW1A 1AA,GB\n"
         + "C2,Bob,Lee,Family.Lee+shop@mail.co.uk,07973 333444,1982-02-02,London,SW1A 1AA,GB\n"},
        {"crm/c2.csv": _FAMILY_CRM + "C1,Ann,Lee,ann.new@mail.co.uk,07973 111222,1980-01-01,,,GB\n"},
    )  # fmt: skip
    con = connect(settings.db_path)
    bob = pw.customer_of(con, "crm", "C2")
    con.close()
    access(settings, Subject.from_options(None, None, bob), tmp_path / "bob.json")
    document = json.loads((tmp_path / "bob.json").read_text())
    assert [(r["crm_id"], r["first_name"]) for r in document["records"]["crm"]] == [("C2", "Bob")]
    with pytest.raises(CdpError, match="the identifier given links 2 customers"):
        access(settings, Subject.from_options("family.lee@mail.co.uk", None, None), tmp_path / "family.json")
    receipt = erasure.erase(settings, Subject.from_options(None, None, bob), dry_run=False)
    assert receipt.deleted["raw_crm"] == 1 and "email_key" not in receipt.suppressed
    con = connect(settings.db_path)
    ann = con.execute("SELECT crm_id, email FROM raw_crm ORDER BY email").fetchall()
    con.close()
    assert ann == [("C1", "ann.new@mail.co.uk"), ("C1", "family.lee@mail.co.uk")]  # both versions of Ann's


_RECYCLED_CRM = "crm_id,first_name,last_name,email,phone,created_at,updated_at\n"


def test_a_crm_id_given_to_someone_new_leaves_the_old_contact_with_the_person_it_was(
    tmp_path: Path, pw: SimpleNamespace
) -> None:
    """The CRM gave Ann's departed contact id C1 to Bob. Her old version (her email and phone, nothing of Bob's
    but the id and a placeholder card, N/A, which is nobody's) is hers: erasing her takes it, her consent grant
    and suppresses her email and phone."""
    recycled = "crm_id,first_name,last_name,email,phone,loyalty_id,created_at,updated_at\n"
    settings = _store_of(
        tmp_path, pw,
        {"crm/v1.csv": recycled + "C1,Ann,Lee,ann.lee@mail.co.uk,07973 111222,N/A,2024-01-01,2024-01-01\n",
         "web/w.csv": "event_id,event_time,anonymous_id,email,event_type\n"
         "W1,2025-01-01T00:00:00Z,ck-ann,ann.lee@mail.co.uk,login\n",
         "consent/k.csv": "consent_id,event_time,purpose,status,email\n"
         "K1,2025-01-01T00:00:00Z,email_marketing,granted,ann.lee@mail.co.uk\n"},
        {"crm/v2.csv": recycled + "C1,Bob,Stone,bob.stone@mail.co.uk,07973 999888,N/A,2025-06-01,2025-06-01\n"},
    )  # fmt: skip
    con = connect(settings.db_path)
    ann = pw.customer_of(con, "web", "W1")
    con.close()
    receipt = erasure.erase(settings, Subject.from_options(None, None, ann), dry_run=False)
    assert receipt.suppressed.get("email_key") == 1 and receipt.suppressed.get("phone_e164") == 1
    con = connect(settings.db_path)
    assert con.execute("SELECT crm_id, first_name FROM raw_crm").fetchall() == [("C1", "Bob")]
    assert con.execute("SELECT count(*) FROM raw_consent").fetchall() == [(0,)]
    con.close()


def test_a_request_by_an_email_an_older_version_carried_reaches_the_customer_it_was(
    tmp_path: Path, pw: SimpleNamespace
) -> None:
    """Ann's contact had ann.old@ (with her phone) and now has ann.new@: a request by the old address is Ann's.
    The first pass finds her through her contact's older version and starts again with her."""
    from consent.access import access

    settings = _store_of(
        tmp_path, pw,
        {"crm/v1.csv": _RECYCLED_CRM + "C1,Ann,Lee,ann.old@yahoo.co.uk,07973 111222,2024-01-01,2024-01-01\n"
         + "C9,Zed,Quinn,zed.quinn@mail.co.uk,,2024-01-01,2024-01-01\n"},
        {"crm/v2.csv": _RECYCLED_CRM + "C1,Ann,Lee,ann.new@mail.co.uk,07973 111222,2025-06-01,2025-06-01\n"},
    )  # fmt: skip
    result = access(settings, Subject.from_options("ann.old@yahoo.co.uk", None, None), tmp_path / "ann.json")
    document = json.loads((tmp_path / "ann.json").read_text())
    assert result.customers == 1 and [p["first_name"] for p in document["profiles"]] == ["Ann"]
    assert sorted(r["email"] for r in document["records"]["crm"]) == ["ann.new@mail.co.uk", "ann.old@yahoo.co.uk"]


def test_erasing_one_part_of_a_split_customer_leaves_the_other_part(tmp_path: Path, pw: SimpleNamespace) -> None:
    """A split keeps the old id for one part: it is no former id of the other part's, whose erasure took its
    profile and consent with it."""
    settings = _store_of(
        tmp_path, pw,
        {"crm/v1.csv": _RECYCLED_CRM + "C1,Ann,Lee,ann.lee@mail.co.uk,,2024-01-01,2024-01-01\n",
         "web/w.csv": "event_id,event_time,anonymous_id,email,event_type\n"
         "W1,2025-01-01T00:00:00Z,ck-ann,ann.lee@mail.co.uk,login\n"},
        {"crm/v2.csv": _RECYCLED_CRM + "C1,Ann,Lee,ann.other@mail.co.uk,,2025-06-01,2025-06-01\n"},
    )  # fmt: skip
    con = connect(settings.db_path)
    kept, split = pw.customer_of(con, "crm", "C1"), pw.customer_of(con, "web", "W1")
    assert con.execute("SELECT reason FROM customer_id_history WHERE old_customer_id = ?", [kept]).fetchall() == [
        ("split",)
    ]
    con.close()
    receipt = erasure.erase(settings, Subject.from_options(None, None, split), dry_run=False)
    assert receipt.plan.scope.former_customers == [] and receipt.deleted["customer_profiles"] == 1
    con = connect(settings.db_path)
    assert con.execute("SELECT customer_id FROM customer_profiles").fetchall() == [(kept,)]
    con.close()

"""Access requests (completeness, nothing of others, 0600), restriction and objection (as enforcement
sees them), and the register of requests with its due dates and audit log. Erasure itself is in
test_privacy_erasure.py."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from cdp.commands import privacy as privacy_cli
from cdp.errors import CdpError
from cdp.store import connect, table_exists
from consent import erasure, register
from consent.access import access
from consent.erasure import Subject
from consent.restriction import active_restrictions, carry_restrictions, restrict, unrestrict

ALICE = Subject.from_options("ALICE.SMITH@gmail.com", None, None)
BOB_STRINGS = ("bob.other", "C-BOB-2", "L-BOB-12", "U-BOB-3", "ck-bob-1", "T-2", "K-2", "Carol", "C-CAROL-3")


def _run_with(world: Any, pw: SimpleNamespace, files: dict[str, str]) -> duckdb.DuckDBPyConnection:
    """The world's inbox with ``files`` added, run through the pipeline; the store's connection, open."""
    pw.write_inbox(world.inbox, files)
    con = connect(world.settings.db_path)
    pw.run_pipeline(con, world.settings, world.inbox)
    return con


# -- access ---------------------------------------------------------------------------------------------
def test_access_document_holds_every_record_of_the_subject_with_provenance_and_nothing_of_others(
    world: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "alice.json"
    result = access(world.settings, ALICE, out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    text = out.read_text()
    doc = json.loads(text)
    assert doc["request_id"] == result.request_id and doc["customer_ids"] == [world.alice]
    keys = {
        source: sorted(r["event_id"] if "event_id" in r else r.get("transaction_id") or r["crm_id"] for r in rows)
        for source, rows in doc["records"].items()
    }
    crm_versions = ["C-ALICE-1", "C-ALICE-1"]  # every version held, not only the latest
    assert keys == {"web": ["W-1", "W-2"], "app": ["A-1", "A-2"], "store": ["T-1"], "crm": crm_versions}
    crm = {r["file"]: r for r in doc["records"]["crm"]}
    assert crm["crm/contacts.csv"]["row_number"] == 1 and crm["crm/contacts.csv"]["batch_id"]
    assert crm["crm/contacts.csv"]["email"] == "Alice.Smith+shop@gmail.com"
    assert crm["crm/contacts_2024.csv"]["email"] == "alice.old@yahoo.co.uk"
    assert crm["crm/contacts.csv"]["date_of_birth"] == "1985-02-03"
    assert [p["customer_id"] for p in doc["profiles"]] == [world.alice]
    assert [c["consent_id"] for c in doc["consent_received"]] == ["K-1"]
    assert [e["event_id"] for e in doc["consent_ledger"]] == ["consent:K-1"]
    assert {s["purpose"] for s in doc["consent_state"]} == {"email_marketing", "sms_marketing"}
    assert sorted(q["reason"] for q in doc["quarantined_rows"]) == [
        "empty required value: event_time", "empty required value: transaction_time",
        "malformed CSV line: too many columns",
    ]  # fmt: skip
    assert [e["segment"] for e in doc["exports"]] == ["all_customers"]
    assert len(doc["identity_links"]) == 6
    # Nothing of Bob (who shares her landline) or Carol.
    assert [s for s in BOB_STRINGS if s in text] == []
    assert result.records == 7
    con = connect(world.settings.db_path)
    assert con.execute("SELECT kind, status, records_affected FROM privacy_requests").fetchall() == [
        ("access", "completed", 7)
    ]
    assert con.execute("SELECT action, count FROM audit_log WHERE action <> 'export'").fetchall() == [("access", 7)]
    con.close()


def test_access_leaves_out_another_persons_row_with_her_key_and_the_other_side_of_her_model_pairs(
    world: Any, pw: SimpleNamespace, tmp_path: Path
) -> None:
    """Bob's receipt from another store reuses her receipt's number (two tills numbering alike): quarantined,
    and his, not hers. A model pair scored between her unit and his names his CRM id: that side is masked."""
    receipt = "transaction_id,transaction_time,store_id,email,first_name,last_name,amount\n"
    receipt += "T-1,2025-04-01T12:00:00Z,S9,bob.other@fastmail.co.uk,Bob,Other,12.00\n"
    con = _run_with(world, pw, {"store/s9.csv": receipt})
    assert con.execute("SELECT reason FROM quarantine WHERE raw LIKE '%S9%'").fetchall() == [
        ("transaction_id already used by another store_id",)
    ]
    (alice_store,) = con.execute(
        "SELECT unit_id FROM customer_source_records WHERE source_record_id = 'T-1'"
    ).fetchall()[0]
    con.execute(
        "CREATE OR REPLACE TABLE identity_model_pairs (unit_id_l VARCHAR, unit_id_r VARCHAR, match_weight DOUBLE)"
    )
    con.execute("INSERT INTO identity_model_pairs VALUES (?, 'crm:C-BOB-2', -3.5)", [alice_store])
    con.close()
    out = tmp_path / "alice.json"
    access(world.settings, ALICE, out)
    text = out.read_text()
    doc = json.loads(text)
    assert "bob.other" not in text and "S9" not in text and "C-BOB-2" not in text
    assert len(doc["quarantined_rows"]) == 3  # her own three, as before
    assert doc["other"]["identity_model_pairs"] == [
        {"unit_id_l": alice_store, "unit_id_r": "(another customer's record)", "match_weight": -3.5}
    ]
    # Erasing her leaves his row where it is.
    erasure.erase(world.settings, ALICE, dry_run=False)
    con = connect(world.settings.db_path)
    assert con.execute("SELECT count(*) FROM quarantine WHERE raw LIKE '%bob.other%'").fetchall()[0][0] == 1
    con.close()


def _access_command(world: Any, out: Path, *subject: str) -> Any:
    """``cdp privacy access SUBJECT --out OUT`` on the world's store (CDP_HOME set by the caller)."""
    return CliRunner().invoke(
        privacy_cli.app, ["access", *subject, "--out", str(out), "--db", str(world.settings.db_path)]
    )


def test_access_command_writes_the_file_and_prints_counts_only(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    out = tmp_path / "bob.json"
    result = _access_command(world, out, "--customer-id", world.bob)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["customer_ids"] == [world.bob] and len(doc["records"]["crm"]) == 1  # Bob has one version
    assert "bob.other" not in result.output and "7946" not in result.output


def _register(world: Any) -> list[list[tuple[Any, ...]]]:
    """The rows of the register of requests and of the audit log (empty when not created yet)."""
    con = connect(world.settings.db_path)
    try:
        return [
            con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() if table_exists(con, t) else []
            for t in ("privacy_requests", "audit_log")
        ]
    finally:
        con.close()


def test_an_access_request_by_a_shared_landline_is_refused_before_anything_is_written_or_registered(
    world: Any, pw: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "household.json"
    before = _register(world)
    result = CliRunner().invoke(
        privacy_cli.app, ["access", "--phone", pw.LANDLINE, "--out", str(out), "--db", str(world.settings.db_path)]
    )  # Alice's and Bob's landline: the document would hand one of them the other's data
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "error: the identifier given links 2 customers (shared by a household?); name the customer with --customer-id"
    ]
    assert list(out.parent.iterdir()) == []  # not even a temporary file left
    assert _register(world) == before


def test_an_access_request_by_a_mistyped_customer_id_is_refused(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An id no current or former customer has was answered with an empty document and a completed request:
    the register then read "nothing held" for nobody. Erasure already refused it."""
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    out = tmp_path / "nobody.json"
    before = _register(world)
    result = CliRunner().invoke(
        privacy_cli.app,
        ["access", "--customer-id", "cus_999999999", "--out", str(out), "--db", str(world.settings.db_path)],
    )
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "error: cus_999999999: no current or former customer has this id; nothing to show (check the id, or ask by "
        "--email or --phone)"
    ]
    assert not out.exists() and _register(world) == before


def test_an_access_request_by_a_shared_mailbox_is_refused(world: Any, pw: SimpleNamespace, tmp_path: Path) -> None:
    family = "crm_id,first_name,last_name,email,date_of_birth\n"
    family += "C-DAN-7,Dan,Nash,family.nash@yahoo.com,1970-01-01\nC-EVE-8,Eve,Nash,family.nash@yahoo.com,1972-02-02\n"
    con = _run_with(world, pw, {"crm/family.csv": family})
    dan, eve = pw.customer_of(con, "crm", "C-DAN-7"), pw.customer_of(con, "crm", "C-EVE-8")
    con.close()
    assert dan != eve  # the world this test needs: one mailbox, two customers
    out = tmp_path / "nash.json"
    before = _register(world)
    with pytest.raises(CdpError, match="links 2 customers") as info:
        access(world.settings, Subject.from_options("Family.Nash@yahoo.com", None, None), out)
    assert "nash" not in str(info.value).lower()
    assert not out.exists() and _register(world) == before


def test_access_by_the_customer_id_of_a_household_member_holds_only_that_customer(world: Any, tmp_path: Path) -> None:
    out = tmp_path / "bob.json"
    result = access(world.settings, Subject.from_options(None, None, world.bob), out)
    text = out.read_text()
    doc = json.loads(text)
    assert result.customers == 1 and doc["customer_ids"] == [world.bob]
    assert [p["first_name"] for p in doc["profiles"]] == ["Bob"]
    assert sorted(r["crm_id"] for r in doc["records"]["crm"]) == ["C-BOB-2"]
    assert sorted(r["transaction_id"] for r in doc["records"]["store"]) == ["T-2"]  # his receipt, by the landline
    # Nothing of Alice, who shares his landline.
    assert [s for s in ("Alice", "C-ALICE-1", "U-ALICE-9", "L-ALICE-77", "1985-02-03") if s in text] == []
    requests = [(r[0], r[1], r[5]) for r in _register(world)[0]]
    assert requests == [(result.request_id, "access", "completed")]


# -- restriction and objection --------------------------------------------------------------------------
def _approved(world: Any, purpose: str = "email_marketing") -> set[str]:
    from consent.enforce import approve

    con = duckdb.connect(str(world.settings.db_path), read_only=True)
    try:
        return set(approve(con, purpose).rows["customer_id"])
    finally:
        con.close()


def test_restriction_and_objection_keep_the_customer_out_of_exports_until_lifted(world: Any) -> None:
    assert world.alice in _approved(world)  # she granted email marketing
    first = restrict(world.settings, ALICE, "restriction")
    assert (first.customers, first.changed) == (1, 1)
    assert world.alice not in _approved(world) and world.bob in _approved(world)
    again = restrict(world.settings, ALICE, "restriction")
    assert again.changed == 0  # already active: no second row
    restrict(world.settings, ALICE, "objection")
    con = connect(world.settings.db_path)
    assert active_restrictions(con) == [
        (world.alice, "objection", _request(con, "objection")),
        (world.alice, "restriction", first.request_id),
    ]
    con.close()
    lifted = unrestrict(world.settings, ALICE, "restriction")
    assert lifted.changed == 1 and world.alice not in _approved(world)  # the objection still holds
    unrestrict(world.settings, ALICE)
    assert world.alice in _approved(world)
    con = connect(world.settings.db_path)
    rows = con.execute("SELECT kind, lifted_at IS NOT NULL FROM restrictions ORDER BY kind").fetchall()
    kinds = [r[0] for r in con.execute("SELECT kind FROM privacy_requests ORDER BY received_at").fetchall()]
    con.close()
    assert rows == [("objection", True), ("restriction", True)]  # history kept
    assert sorted(kinds) == ["lift_restriction"] * 2 + ["objection"] + ["restriction"] * 2


def _request(con: duckdb.DuckDBPyConnection, kind: str) -> str:
    return con.execute("SELECT request_id FROM privacy_requests WHERE kind = ?", [kind]).fetchall()[0][0]


def test_a_restriction_by_a_shared_landline_is_refused_and_names_nobody(world: Any) -> None:
    with pytest.raises(CdpError, match="links 2 customers") as info:
        restrict(world.settings, Subject.from_options(None, "020 7946 0123", None))  # Alice's and Bob's
    assert "+44" not in str(info.value) and "7946" not in str(info.value)
    con = connect(world.settings.db_path)
    assert active_restrictions(con) == []
    con.close()


def test_an_active_restriction_follows_the_customer_to_a_new_id(world: Any) -> None:
    restrict(world.settings, Subject("customer_id", world.alice))
    con = connect(world.settings.db_path)
    con.execute(
        "INSERT INTO customer_id_history VALUES (?, 'cus_new', 'merged', 'r2', now()::TIMESTAMP)", [world.alice]
    )
    assert carry_restrictions(con) == 1
    assert carry_restrictions(con) == 0  # idempotent
    assert {c for c, _k, _r in active_restrictions(con)} == {world.alice, "cus_new"}
    con.close()


def test_a_restriction_lifted_after_a_merge_stays_lifted(world: Any) -> None:
    """Lifted on the id the customer now has, a restriction carried there from a merged id is not carried
    back by the next run; the merged id's row is lifted with it."""
    restrict(world.settings, Subject("customer_id", world.alice))
    con = connect(world.settings.db_path)
    con.execute("UPDATE customer_source_records SET customer_id = 'cus_new' WHERE customer_id = ?", [world.alice])
    con.execute(
        "INSERT INTO customer_id_history VALUES (?, 'cus_new', 'merged', 'r2', now()::TIMESTAMP)", [world.alice]
    )
    assert carry_restrictions(con) == 1
    con.close()
    assert unrestrict(world.settings, Subject("customer_id", "cus_new")).changed == 2  # cus_new's, and the old id's
    con = connect(world.settings.db_path)
    assert carry_restrictions(con) == 0 and active_restrictions(con) == []
    con.execute("UPDATE restrictions SET lifted_at = NULL WHERE customer_id = ?", [world.alice])  # as before the fix
    assert carry_restrictions(con) == 0 and [c for c, _k, _r in active_restrictions(con)] == [world.alice]
    con.close()


# -- the register ---------------------------------------------------------------------------------------
def test_requests_are_due_a_calendar_month_later_and_flagged_when_overdue() -> None:
    con = duckdb.connect()
    jan31 = datetime(2026, 1, 31, 9, 0)
    late = register.open_request(con, "erasure", "h1", now=jan31)
    on_time = register.open_request(con, "access", "h2", now=jan31)
    still_open = register.open_request(con, "restriction", None, now=jan31)
    assert register.open_request(con, "erasure", "h1", now=datetime(2026, 2, 2)) == late  # same subject
    register.complete_request(con, late, 5, now=datetime(2026, 3, 1))
    register.complete_request(con, on_time, 2, now=datetime(2026, 2, 27))
    rows = {r["request_id"]: r for r in register.list_requests(con, now=datetime(2026, 3, 2))}
    assert rows[late]["due_at"] == datetime(2026, 2, 28, 9, 0)
    assert (rows[late]["overdue"], rows[on_time]["overdue"], rows[still_open]["overdue"]) == (True, False, True)
    before_due = register.list_requests(con, now=datetime(2026, 2, 10))
    assert [r["overdue"] for r in before_due if r["request_id"] == still_open] == [False]
    # No column for a raw identifier: at most the keyed hash of the subject.
    columns = [r[0] for r in con.execute("DESCRIBE privacy_requests").fetchall()]
    assert columns == [
        "request_id", "kind", "received_at", "due_at", "completed_at", "status", "records_affected", "subject_hash",
    ]  # fmt: skip


def test_requests_command_lists_and_flags_overdue(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    con = connect(world.settings.db_path)
    old = register.open_request(con, "access", None, now=datetime(2020, 1, 1))
    register.audit(con, "export", None, "segment all_customers purpose email_marketing", 3, actor="ann")
    con.close()
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    result = CliRunner().invoke(privacy_cli.app, ["requests", "--db", str(world.settings.db_path)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if old in line)
    assert "OVERDUE" in line and "2020-02-01" in line
    assert "1 requests, 1 overdue" in result.output


def test_an_open_request_that_will_not_be_carried_out_is_closed_with_its_outcome() -> None:
    con = duckdb.connect()
    jan31 = datetime(2026, 1, 31, 9, 0)
    refused = register.open_request(con, "erasure", "h1", now=jan31)  # say, a household phone: nobody in particular
    withdrawn = register.open_request(con, "access", "h2", now=jan31)
    done = register.open_request(con, "access", "h3", now=jan31)
    register.complete_request(con, done, 2, now=datetime(2026, 2, 3))
    register.close_request(con, refused, "refused", now=datetime(2026, 2, 2))
    register.close_request(con, withdrawn, "withdrawn", now=datetime(2026, 3, 5))
    rows = {r["request_id"]: r for r in register.list_requests(con, now=datetime(2026, 4, 1))}
    assert (rows[refused]["status"], rows[refused]["completed_at"], rows[refused]["overdue"]) == (
        "refused", datetime(2026, 2, 2), False,
    )  # fmt: skip
    assert (rows[withdrawn]["status"], rows[withdrawn]["overdue"]) == ("withdrawn", True)  # answered late
    # Only an open request closes; a closed one is not reused by the same subject's next request.
    for request_id, status in ((done, "completed"), (refused, "refused")):
        with pytest.raises(CdpError, match=f"is {status}; only an open request can be closed"):
            register.close_request(con, request_id, "withdrawn")
    with pytest.raises(CdpError, match="no such request"):
        register.close_request(con, "PR-20260101-000000", "refused")
    with pytest.raises(CdpError, match="expected one of refused, withdrawn"):
        register.close_request(con, register.open_request(con, "access", None), "completed")
    assert register.open_request(con, "erasure", "h1") not in rows
    actions = con.execute("SELECT action, request_id, detail FROM audit_log ORDER BY request_id").fetchall()
    assert sorted(actions) == sorted(
        [("close_request", refused, "closed as refused"), ("close_request", withdrawn, "closed as withdrawn")]
    )


def test_close_command_closes_an_open_request_and_refuses_anything_else(world: Any, monkeypatch) -> None:
    con = connect(world.settings.db_path)
    request_id = register.open_request(con, "erasure", None)
    con.close()
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    db = ["--db", str(world.settings.db_path)]
    result = CliRunner().invoke(privacy_cli.app, ["close", request_id, "--outcome", "Withdrawn", *db])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"request {request_id}: closed as withdrawn"
    listed = CliRunner().invoke(privacy_cli.app, ["requests", *db]).output
    assert "withdrawn" in next(line for line in listed.splitlines() if request_id in line)
    again = CliRunner().invoke(privacy_cli.app, ["close", request_id, "--outcome", "refused", *db])
    assert again.exit_code == 2 and again.output.strip() == (
        f"error: request {request_id}: is withdrawn; only an open request can be closed"
    )


def test_access_by_an_address_nobody_carries_says_nothing_is_held(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDP_HOME", str(world.settings.home))
    answer = _access_command(world, tmp_path / "nobody.json", "--email", "nobody.here@mailbox.org")
    assert answer.exit_code == 0, answer.output
    assert "Nothing is held on the subject" in " ".join(answer.output.split())
    assert "Nothing is held" not in _access_command(world, tmp_path / "b.json", "--customer-id", world.bob).output


def test_an_access_document_is_never_written_over_an_existing_file(world: Any, tmp_path: Path) -> None:
    """Written over, Alice's document would be gone (the register still listing it as hers) and Bob's in its
    place; the file is refused before anything is registered."""
    out = tmp_path / "doc.json"
    access(world.settings, Subject.from_options(None, None, world.alice), out)
    before = _register(world)
    with pytest.raises(CdpError, match="exists; an access document is written to a new file"):
        access(world.settings, Subject.from_options(None, None, world.bob), out)
    assert json.loads(out.read_text())["customer_ids"] == [world.alice] and _register(world) == before


def test_lifting_a_restriction_on_one_part_of_a_split_keeps_the_other_parts(world: Any) -> None:
    """A split keeps the old id for one part, and carries the restriction to the new one: lifting it there
    lifted it on the part that kept the old id too, a live customer who had not asked."""
    restrict(world.settings, Subject("customer_id", world.alice))
    con = connect(world.settings.db_path)
    record = con.execute(
        "SELECT source, source_record_id FROM customer_source_records WHERE customer_id = ? ORDER BY 1, 2 LIMIT 1",
        [world.alice],
    ).fetchall()[0]
    con.execute(
        "UPDATE customer_source_records SET customer_id = 'cus_split' WHERE source = ? AND source_record_id = ?",
        list(record),
    )
    con.execute(
        "INSERT INTO customer_id_history VALUES (?, 'cus_split', 'split', 'r2', now()::TIMESTAMP)", [world.alice]
    )
    assert carry_restrictions(con) == 1
    con.close()
    assert unrestrict(world.settings, Subject("customer_id", "cus_split")).changed == 1
    con = connect(world.settings.db_path)
    assert [c for c, _k, _r in active_restrictions(con)] == [world.alice]
    con.close()

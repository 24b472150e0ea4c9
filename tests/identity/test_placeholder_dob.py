"""Dates of birth that stand for "unknown" (1900-01-01 and earlier, 9999-12-31, later than the record) are
staged as NULL: kept, they made namesakes with their own mailboxes and phones one person."""

from __future__ import annotations

import csv
from pathlib import Path

from identity.resolve import resolve_identities

CRM = ("crm_id", "first_name", "last_name", "email", "phone", "date_of_birth", "postcode", "created_at", "updated_at")
ROWS = [
    # Two John Smiths, each his own mailbox and phone, both "born" on the CRM's default date.
    ("C1", "John", "Smith", "john.smith@gmail.com", "07700 900001", "1900-01-01", "M1 1AA", "2026-01-05", ""),
    ("C2", "John", "Smith", "jsmith1961@yahoo.co.uk", "07700 900002", "1900-01-01", "M1 1AA", "2026-02-05", ""),
    ("C3", "Ann", "Lee", "ann.lee@gmail.com", "07700 900003", "1899-12-31", "", "2026-03-05", ""),
    ("C4", "Bo", "Chan", "bo.chan@gmail.com", "07700 900004", "9999-12-31", "", "2026-03-05", ""),
    ("C5", "Cy", "Ward", "cy.ward@gmail.com", "07700 900005", "2026-06-01", "", "2026-03-05", "2026-04-01"),
    ("C6", "Di", "Hart", "di.hart@gmail.com", "07700 900006", "1970-01-01", "", "2026-03-05", ""),
    ("C7", "Ed", "Ray", "ed.ray@gmail.com", "07700 900007", "1900-01-02", "", "2026-03-05", ""),
]


def test_placeholder_dates_of_birth_are_no_evidence(tmp_path: Path, idstage) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    with (inbox / "crm" / "crm-2026-11-01.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CRM)
        writer.writerows(ROWS)
    con, settings = idstage(inbox, tmp_path)
    staged = dict(con.execute("SELECT source_record_id, date_of_birth::VARCHAR FROM stg_records").fetchall())
    # The raw rows keep what the export said; staging reads placeholders and impossible dates as unknown.
    unknown = dict.fromkeys(("C1", "C2", "C3", "C4", "C5"))
    assert staged == {**unknown, "C6": "1970-01-01", "C7": "1900-01-02"}
    assert con.execute("SELECT count(*) FROM raw_crm WHERE date_of_birth = DATE '1900-01-01'").fetchall() == [(2,)]
    resolve_identities(con, settings)
    johns = con.execute(
        "SELECT count(DISTINCT customer_id) FROM customer_source_records WHERE source_record_id IN ('C1', 'C2')"
    ).fetchall()
    assert johns == [(2,)]

"""Addresses beyond ASCII (an internationalised domain, a Unicode mailbox name) from the inbox to consent.

Staging reads them with the Python rule (identity.standardise.email_functions), so that two spellings of one
address link, pass the staged suites, and a withdrawal naming one spelling reaches the customer holding
another.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cdp.quality import validate_table
from identity.resolve import resolve_identities

KEY = "jörg.müller@xn--bcher-kva.de"


def test_an_international_address_links_its_spellings_and_carries_a_withdrawal(
    tmp_path: Path, idstage, idcsv, idowners, idconsent
) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    idcsv(
        inbox / "crm" / "crm-2026-11-01.csv",
        [
            ("crm_id", "first_name", "last_name", "email", "phone", "updated_at"),
            ("C1", "Jörg", "Müller", " Jörg.Müller@Bücher.DE ", "07700 900111", "2026-10-01 09:00:00"),
            # The same mailbox name in decomposed form (o + combining diaeresis), as some keyboards send it.
            ("C2", "Zoë", "Ngata", "zoe\u0308@Bücher.de", "", "2026-10-01 09:00:00"),
        ],
    )
    idcsv(
        inbox / "store" / "store-2026-11-01.csv",
        [
            ("transaction_id", "transaction_time", "store_id", "email", "amount", "currency"),
            ("T1", "2026-10-02 12:00:00", "S1", "jörg.müller@xn--bcher-kva.de", "20.00", "GBP"),
            ("T2", "2026-10-02 13:00:00", "S1", "ZOË@BÜCHER.DE", "5.00", "GBP"),
        ],
    )
    idcsv(
        inbox / "consent" / "consent-2026-11-01.csv",
        [
            ("consent_id", "event_time", "purpose", "status", "source", "email", "phone"),
            ("K1", "2026-10-03 09:00:00", "sms_marketing", "granted", "crm", "", "07700 900111"),
            # Withdrawn later by email only, written as the customer typed it at the till.
            ("K2", "2026-10-05 09:00:00", "sms_marketing", "withdrawn", "store_form", "JÖRG.MÜLLER@BÜCHER.DE", ""),
            # A withdrawal with the domain mistyped: no address's key, yet loosely his (consent.state.loose_email).
            ("K3", "2026-10-06 09:00:00", "email_marketing", "withdrawn", "crm", "jörg.müller@bücher.con", ""),
        ],
    )
    con, settings = idstage(inbox, tmp_path)

    keys = dict(con.execute("SELECT source_record_id, email_key FROM stg_records").fetchall())
    assert keys == {"C1": KEY, "T1": KEY, "C2": "zoë@xn--bcher-kva.de", "T2": "zoë@xn--bcher-kva.de"}
    emails = dict(con.execute("SELECT source_record_id, email FROM stg_records").fetchall())
    assert emails["C1"] == KEY  # the deliverable address: the domain in the ASCII form mail servers use
    consent_keys = dict(con.execute("SELECT consent_id, email_key FROM stg_consent").fetchall())
    assert consent_keys == {"K1": None, "K2": KEY, "K3": "jörg.müller@xn--bcher-kva.con"}
    for table in ("stg_records", "stg_consent"):
        assert validate_table(con, table).success, table

    resolve_identities(con, settings)
    owner = idowners(con)
    assert owner["C1"] == owner["T1"] and owner["C2"] == owner["T2"] and owner["C1"] != owner["C2"]

    consent_of = idconsent(con, datetime(2026, 11, 1))
    assert consent_of(owner["C1"], "sms_marketing") == [("withdrawn", "email_key")]
    assert consent_of(owner["C1"], "email_marketing") == [("withdrawn", "email_loose")]

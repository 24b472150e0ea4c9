"""Loyalty card numbers are matched whatever the case of their letters (identity.standardise.normalise_id).

A card keyed into the CRM or at a till as ``loy10042`` is card ``LOY10042``: the contact links to the
receipts paid with it, and a withdrawal naming the card in any case reaches the customer.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from identity.resolve import resolve_identities


def test_a_card_typed_in_lower_case_is_the_same_card(tmp_path: Path, idstage, idcsv, idowners, idconsent) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    idcsv(
        inbox / "crm" / "crm-2026-11-01.csv",
        [
            ("crm_id", "first_name", "last_name", "email", "loyalty_id", "updated_at"),
            ("C1", "Maya", "Okafor", "maya.okafor@example.org", " loy10042 ", "2026-10-01 09:00:00"),
            ("C2", "Tom", "Reyes", "tom.reyes@example.org", "LOY20077", "2026-10-01 09:00:00"),
        ],
    )
    idcsv(
        inbox / "store" / "store-2026-11-01.csv",
        [
            ("transaction_id", "transaction_time", "store_id", "loyalty_id", "amount", "currency"),
            ("T1", "2026-10-02 12:00:00", "S1", "LOY10042", "20.00", "GBP"),
            ("T2", "2026-10-03 12:00:00", "S1", "Loy10042", "5.00", "GBP"),
        ],
    )
    idcsv(
        inbox / "consent" / "consent-2026-11-01.csv",
        [
            ("consent_id", "event_time", "purpose", "status", "source", "email", "loyalty_id"),
            ("K1", "2026-10-03 09:00:00", "email_marketing", "granted", "crm", "maya.okafor@example.org", ""),
            ("K2", "2026-10-05 09:00:00", "email_marketing", "withdrawn", "store_form", "", "loy10042"),
        ],
    )
    con, settings = idstage(inbox, tmp_path)

    cards = dict(con.execute("SELECT source_record_id, loyalty_id FROM stg_records").fetchall())
    assert cards == {"C1": "LOY10042", "C2": "LOY20077", "T1": "LOY10042", "T2": "LOY10042"}
    assert con.execute("SELECT loyalty_id FROM stg_consent WHERE consent_id = 'K2'").fetchall() == [("LOY10042",)]

    resolve_identities(con, settings)
    owner = idowners(con)
    assert owner["C1"] == owner["T1"] == owner["T2"] != owner["C2"]

    consent_of = idconsent(con, datetime(2026, 11, 1))
    assert consent_of(owner["C1"], "email_marketing") == [("withdrawn", "loyalty_id")]

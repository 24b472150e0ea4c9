"""UUIDs are matched whatever the case of their letters (identity.standardise.normalise_id).

iOS writes a device's advertising or vendor id in capitals; a consent platform, a CRM or a web SDK may store
the same UUID in lower case. RFC 9562 reads a UUID whatever its case, and so does the platform: records
link through it, and a withdrawal naming it in another case reaches the customer. Ids of other shapes keep
their case (an account or cookie id may be case-sensitive).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from consent.ledger import sync_ledger
from consent.state import build_consent_state, state_current
from identity.resolve import resolve_identities
from identity.standardise import normalise_id, sql_normalise_id

DEVICE = "6F9619FF-8B86-D011-B42D-00C04FC964FF"  # as iOS writes it
ACCOUNT = "0b1e4c2a-77d3-4f0e-9a51-3c2d9e8f7a10"  # as the web shop's accounts are written


@pytest.mark.parametrize(
    ("id_type", "written", "matched"),
    [
        ("device_id", f" {DEVICE} ", DEVICE.lower()),
        ("user_id", ACCOUNT.upper(), ACCOUNT),
        ("anonymous_id", "{" + DEVICE + "}", "{" + DEVICE + "}"),  # not the standard form: as written
        ("device_id", DEVICE.replace("-", ""), DEVICE.replace("-", "")),
        ("user_id", "U-Ab1", "U-Ab1"),
        ("loyalty_id", "loy10042", "LOY10042"),
        ("loyalty_id", DEVICE, DEVICE.lower()),
        ("crm_id", "6F9619FF-8B86-D011-B42D-00C04FC964FG", "6F9619FF-8B86-D011-B42D-00C04FC964FG"),  # not hex
        ("device_id", f"\u00a0\t{DEVICE}\u3000", DEVICE.lower()),  # any whitespace around it
        ("device_id", f"{DEVICE}x", f"{DEVICE}x"),  # more than a UUID: as written
        ("user_id", f" {ACCOUNT} {ACCOUNT} ", f"{ACCOUNT} {ACCOUNT}"),
        ("loyalty_id", f"loy {DEVICE}", f"LOY {DEVICE}"),
        ("device_id", " \t\n", None),
    ],
)
def test_sql_reads_ids_as_python_does(id_type: str, written: str, matched: str | None) -> None:
    assert normalise_id(id_type, written) == matched
    con = duckdb.connect()
    assert con.execute(f"SELECT {sql_normalise_id(id_type, '$v')}", {"v": written}).fetchall() == [(matched,)]


def test_a_uuid_in_another_case_links_records_and_carries_a_withdrawal(
    tmp_path: Path, idstage, idcsv, idowners, idconsent
) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    idcsv(
        inbox / "crm" / "crm-2026-11-01.csv",
        [
            ("crm_id", "first_name", "last_name", "email", "user_id", "updated_at"),
            ("C1", "Maya", "Okafor", "maya.okafor@example.org", ACCOUNT, "2026-10-01 09:00:00"),
            ("C2", "Tom", "Reyes", "tom.reyes@example.org", "", "2026-10-01 09:00:00"),
        ],
    )
    idcsv(
        inbox / "app" / "app-2026-11-01.csv",
        [
            ("event_id", "event_time", "device_id", "user_id", "event_type", "platform"),
            ("A1", "2026-10-02 12:00:00", DEVICE, ACCOUNT.upper(), "login", "ios"),
            ("A2", "2026-10-02 12:01:00", DEVICE, "", "push_opt_in", "ios"),
        ],
    )
    idcsv(
        inbox / "consent" / "consent-2026-11-01.csv",
        [
            ("consent_id", "event_time", "purpose", "status", "source", "device_id"),
            ("K1", "2026-10-05 09:00:00", "push_marketing", "withdrawn", "app_prompt", DEVICE.lower()),
        ],
    )
    con, settings = idstage(inbox, tmp_path)
    staged = con.execute("SELECT DISTINCT device_id, user_id FROM stg_records WHERE source = 'app'").fetchall()
    assert sorted(staged, key=str) == sorted([(DEVICE.lower(), ACCOUNT), (DEVICE.lower(), None)], key=str)

    resolve_identities(con, settings)
    owner = idowners(con)
    assert owner["C1"] == owner["A1"] == owner["A2"] != owner["C2"]

    consent_of = idconsent(con, datetime(2026, 11, 1))
    assert consent_of(owner["C1"], "push_marketing") == [("withdrawn", "device_id")]


def test_ledger_events_appended_under_older_rules_are_read_by_todays(tmp_path: Path, idstage, idcsv) -> None:  # type: ignore[no-untyped-def]
    """A store upgraded from a release that read some identifiers otherwise holds events naming them as read
    then: a card as typed, a device id in capitals, no email at all for an address beyond ASCII. The next sync
    reads every event's identifiers again from its raw row, once, and consent is computed anew in full, so
    the old withdrawals reach their customers."""
    inbox = tmp_path / "inbox"
    joerg, joerg_ascii = "jörg.müller@bücher.de", "JÖRG.MÜLLER@xn--bcher-kva.de"
    idcsv(
        inbox / "crm" / "crm-2026-11-01.csv",
        [
            ("crm_id", "first_name", "last_name", "email", "loyalty_id", "user_id", "updated_at"),
            ("C1", "Maya", "Okafor", "maya.okafor@example.org", "LOY10042", ACCOUNT, "2026-10-01 09:00:00"),
            ("C2", "Jörg", "Müller", joerg, "", "", "2026-10-01 09:00:00"),
        ],
    )
    idcsv(
        inbox / "app" / "app-2026-11-01.csv",
        [
            ("event_id", "event_time", "device_id", "user_id", "event_type", "platform"),
            ("A1", "2026-10-02 12:00:00", DEVICE, ACCOUNT, "login", "ios"),
            ("A2", "2026-10-06 12:00:00", DEVICE, "", "push_opt_out", "ios"),
        ],
    )
    idcsv(
        inbox / "consent" / "consent-2026-11-01.csv",
        [
            ("consent_id", "event_time", "purpose", "status", "source", "email", "loyalty_id"),
            ("K1", "2026-10-03 09:00:00", "push_marketing", "granted", "crm", "maya.okafor@example.org", ""),
            ("K2", "2026-10-03 09:00:00", "email_marketing", "granted", "crm", "maya.okafor@example.org", ""),
            ("K3", "2026-10-05 09:00:00", "email_marketing", "withdrawn", "store_form", "", "loy10042"),
            ("K4", "2026-10-03 09:00:00", "email_marketing", "granted", "crm", joerg, ""),
            ("K5", "2026-10-05 09:00:00", "email_marketing", "withdrawn", "web_banner", joerg_ascii, ""),
        ],
    )
    con, settings = idstage(inbox, tmp_path)
    resolve_identities(con, settings)
    assert sync_ledger(con)["reread"] == 0  # a new ledger: nothing to read again
    # As an older release's ledger holds them, with no record of the rules it read them by.
    con.execute("UPDATE consent_events SET device_id = ? WHERE event_id = 'app:A2'", [DEVICE])
    con.execute("UPDATE consent_events SET loyalty_id = 'loy10042' WHERE consent_id = 'K3'")
    con.execute("UPDATE consent_events SET email = NULL, email_key = NULL WHERE consent_id IN ('K4', 'K5')")
    con.execute("DELETE FROM staging_basis WHERE table_name = 'consent_events'")
    as_of = datetime(2026, 11, 1)
    build_consent_state(con, as_of=as_of)
    owner = dict(con.execute("SELECT source_record_id, customer_id FROM customer_source_records").fetchall())
    states = "SELECT customer_id, purpose, status FROM consent_state ORDER BY ALL"
    assert con.execute(states).fetchall() == [  # Maya's withdrawals reach nobody
        (owner["C1"], "email_marketing", "granted"),
        (owner["C1"], "push_marketing", "granted"),
        (owner["C2"], "email_marketing", "withdrawn"),  # loosely, from the address in the raw row
    ]

    counts = sync_ledger(con)
    assert counts["reread"] == 4 and counts["appended_consent"] == counts["appended_app"] == 0
    assert not state_current(con)  # the state is computed anew in full
    keys = "SELECT DISTINCT email_key FROM {} WHERE email_key LIKE 'j%'"
    assert con.execute(keys.format("consent_events")).fetchall() == con.execute(keys.format("stg_records")).fetchall()
    build_consent_state(con, as_of=as_of)
    assert con.execute(states).fetchall() == [
        (owner["C1"], "email_marketing", "withdrawn"),
        (owner["C1"], "push_marketing", "withdrawn"),
        (owner["C2"], "email_marketing", "withdrawn"),
    ]
    assert sync_ledger(con)["reread"] == 0  # once per change of the rules

"""Profile traits that need the raw export, on a hand-made inbox."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from identity.profiles import build_customer_profiles
from identity.resolve import resolve_identities


def test_a_crm_contact_is_first_seen_when_it_was_created_not_when_it_was_last_edited(tmp_path: Path, idstage) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    (inbox / "store").mkdir()
    with (inbox / "crm" / "crm-2026-11-01.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [
                ("crm_id", "first_name", "last_name", "email", "created_at", "updated_at"),
                ("CY", "Yvonne", "Hart", "yvonne.hart@mailbox.co.uk", "2016-03-01 09:00:00", "2023-06-01 09:00:00"),
            ]
        )
    with (inbox / "store" / "store-2026-11-01.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [
                ("transaction_id", "transaction_time", "store_id", "email", "amount", "currency"),
                ("TY", "2024-02-02 12:00:00", "S1", "yvonne.hart@mailbox.co.uk", "20.00", "GBP"),
            ]
        )
    con, settings = idstage(inbox, tmp_path)
    resolve_identities(con, settings)
    build_customer_profiles(con, settings)
    first, last = con.execute("SELECT first_seen, last_seen FROM customer_profiles").fetchall()[0]
    assert (first, last) == (datetime(2016, 3, 1, 9), datetime(2024, 2, 2, 12))


def test_a_profile_shows_names_as_written_not_in_their_matching_form(tmp_path: Path, idstage) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    rows = [
        ("crm_id", "first_name", "last_name", "email", "updated_at"),
        ("C1", "SØREN", "ŁUKASIEWICZ", "soren.l@mailbox.co.uk", "2024-01-01 09:00:00"),  # all capitals
        ("C2", "siobhan", "o'brien-mcdonald", "siobhan.ob@mailbox.co.uk", "2024-01-01 09:00:00"),  # all lower
        ("C3", "Dr.  Peter", "van der Berg", "peter.vdb@mailbox.co.uk", "2024-01-01 09:00:00"),  # mixed: kept
        ("C4", "Zoë", "...", "zoe.x@mailbox.co.uk", "2024-01-01 09:00:00"),  # no surname to show
    ]
    with (inbox / "crm" / "crm-2026-11-01.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    con, settings = idstage(inbox, tmp_path)
    # Matching still reads the folded forms: ø and ł are spelled out, not dropped.
    staged = dict(con.execute("SELECT source_record_id, first_name || ' ' || last_name FROM stg_records").fetchall())
    assert staged["C1"] == "soren lukasiewicz" and staged["C2"] == "siobhan obrien-mcdonald"
    resolve_identities(con, settings)
    build_customer_profiles(con, settings)
    names = con.execute(
        """SELECT first_name, last_name FROM customer_profiles p JOIN customer_source_records r USING (customer_id)
           ORDER BY r.source_record_id"""
    ).fetchall()
    assert names == [
        ("Søren", "Łukasiewicz"),
        ("Siobhan", "O'Brien-McDonald"),
        ("Peter", "van der Berg"),
        ("Zoë", None),
    ]


def test_spend_is_in_one_currency_and_crm_edits_are_no_sign_of_the_customer(tmp_path: Path, idstage, idcsv) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    email = "yan.li@mailbox.co.uk"
    idcsv(
        inbox / "crm" / "crm.csv",
        [
            ("crm_id", "first_name", "last_name", "email", "address_line1", "city", "created_at", "updated_at"),
            (
                "CL",
                "Yan",
                "Li",
                email,
                "12 ST MARY'S ROAD",
                "STOKE-ON-TRENT",
                "2020-01-01 09:00:00",
                "2025-09-09 09:00:00",
            ),
            ("CO", "Ola", "Berg", "ola.berg@mailbox.co.uk", "", "", "2021-01-01 09:00:00", ""),  # no channel at all
        ],
    )
    idcsv(
        inbox / "store" / "store.csv",
        [
            ("transaction_id", "transaction_time", "store_id", "email", "amount", "currency"),
            ("T1", "2024-01-01 12:00:00", "S1", email, "50.00", "GBP"),
            ("T2", "2024-02-01 12:00:00", "S9", email, "100.00", "EUR"),
            ("T3", "2024-03-01 12:00:00", "S9", email, "20.00", "USD"),  # no rate: an order, not spend
            ("T4", "2024-04-01 12:00:00", "S1", email, "10.00", ""),  # no currency: the profiles'
        ],
    )
    con, settings = idstage(inbox, tmp_path)
    settings = settings.with_overrides(exchange_rates={"EUR": 0.86})
    resolve_identities(con, settings)
    build_customer_profiles(con, settings)
    profiles = {
        row[0]: row[1:]
        for row in con.execute(
            """SELECT first_name, orders, total_spend, orders_in_other_currencies, average_order_value, last_seen,
                      address_line1, city, channels FROM customer_profiles"""
        ).fetchall()
    }
    orders, spend, other, average, last_seen, address, city, channels = profiles["Yan"]
    assert (orders, str(spend), other, str(average)) == (4, "146.00", 1, "48.67")  # 50 + 100 x 0.86 + 10
    assert last_seen == datetime(2024, 4, 1, 12)  # the CRM edit of 2025 is not the customer's doing
    assert (address, city, channels) == ("12 St Mary's Road", "Stoke-On-Trent", ["store"])
    assert profiles["Ola"][-1] == []  # no channel is an empty list, not NULL


def test_a_default_or_future_record_time_counts_for_nothing(tmp_path: Path, idstage, idcsv) -> None:  # type: ignore[no-untyped-def]
    from cdp.quality import validate_table

    inbox = tmp_path / "inbox"
    idcsv(
        inbox / "web" / "web.csv",
        [
            ("event_id", "event_time", "anonymous_id", "user_id", "event_type"),
            ("W1", "1970-01-01T00:00:00Z", "ck1", "U1", "login"),  # a system's default time
            ("W2", "2024-05-05T10:00:00Z", "ck1", "U1", "page_view"),
            ("W3", "2099-12-31T23:59:59Z", "ck1", "U1", "page_view"),  # a clock far ahead
        ],
    )
    con, settings = idstage(inbox, tmp_path)
    suite = validate_table(con, "raw_web")
    assert not suite.success and suite.failures == [
        {"expectation": "expect_column_values_to_be_between(event_time)", "unexpected_count": 2}
    ]
    resolve_identities(con, settings)
    build_customer_profiles(con, settings)
    seen = con.execute("SELECT first_seen, last_seen, source_records FROM customer_profiles").fetchall()
    assert seen == [(datetime(2024, 5, 5, 10), datetime(2024, 5, 5, 10), 3)]  # every record kept, two times not

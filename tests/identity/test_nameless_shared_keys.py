"""A staff card, the shop's phone or its email on nameless receipts that each carry a customer's own email or
phone is a shared key: it must not make those customers one (consent, access and erasure would follow)."""

from __future__ import annotations

import csv
from pathlib import Path

from identity.resolve import resolve_identities

CRM = [
    ("crm_id", "first_name", "last_name", "email", "phone", "date_of_birth", "created_at"),
    ("CA", "Alice", "Green", "alice.green@mailbox.co.uk", "07911 100101", "1981-02-03", "2026-01-01"),
    ("CR", "Robert", "White", "robert.white@mailbox.co.uk", "07911 100202", "1975-06-07", "2026-01-01"),
    ("CU", "Uma", "Patel", "uma.patel@mailbox.co.uk", "07911 100303", "1990-09-09", "2026-01-01"),
    ("CV", "Victor", "Hughes", "victor.hughes@mailbox.co.uk", "07911 100404", "1968-12-12", "2026-01-01"),
    ("CP", "Paul", "Dean", "paul.dean@mailbox.co.uk", "07911 100505", "1979-04-04", "2026-01-01"),
]
STORE = [
    ("transaction_id", "transaction_time", "store_id", "loyalty_id", "email", "phone", "amount", "currency"),
    # A staff card on two sales, each receipt emailed to its customer.
    ("TA", "2026-10-02 10:00:00", "S1", "STAFF7788", "alice.green@mailbox.co.uk", "", "30.00", "GBP"),
    ("TR", "2026-10-03 10:00:00", "S1", "STAFF7788", "robert.white@mailbox.co.uk", "", "45.00", "GBP"),
    # The shop's phone on two receipts, each with its customer's email.
    ("TU", "2026-10-05 10:00:00", "S1", "", "uma.patel@mailbox.co.uk", "0113 496 0123", "15.00", "GBP"),
    ("TV", "2026-10-05 11:00:00", "S1", "", "victor.hughes@mailbox.co.uk", "0113 496 0123", "25.00", "GBP"),
    # One customer's own card on two receipts with his own email: still one customer.
    ("TP1", "2026-10-06 10:00:00", "S1", "LOY5550001", "paul.dean@mailbox.co.uk", "", "10.00", "GBP"),
    ("TP2", "2026-10-07 10:00:00", "S1", "LOY5550001", "paul.dean@mailbox.co.uk", "", "12.00", "GBP"),
    ("TP3", "2026-10-08 10:00:00", "S1", "LOY5550001", "", "", "14.00", "GBP"),
]


def test_a_key_nameless_receipts_share_with_different_contacts_joins_nobody(tmp_path: Path, idstage) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    for source, rows in (("crm", CRM), ("store", STORE)):
        (inbox / source).mkdir(parents=True)
        with (inbox / source / f"{source}-2026-11-01.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    con, settings = idstage(inbox, tmp_path)
    stats = resolve_identities(con, settings)
    customer = dict(con.execute("SELECT source_record_id, customer_id FROM customer_source_records").fetchall())
    assert customer["TA"] == customer["CA"] != customer["TR"] == customer["CR"]
    assert customer["TU"] == customer["CU"] != customer["TV"] == customer["CV"]
    assert customer["TP1"] == customer["TP2"] == customer["TP3"] == customer["CP"]
    assert stats["conflicting_customers_after_guard"] == 0


def test_a_receipt_making_a_card_shared_is_handled_incrementally_as_in_a_rebuild(tmp_path: Path, idstage) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    (inbox / "crm").mkdir(parents=True)
    (inbox / "store").mkdir()
    with (inbox / "crm" / "crm-2026-11-01.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(CRM)
    con = None

    def run(name: str, rows: list[tuple[str, ...]]) -> dict:
        nonlocal con
        with (inbox / "store" / name).open("w", newline="") as handle:
            csv.writer(handle).writerows([STORE[0], *rows])
        con, settings = idstage(inbox, tmp_path, con)
        return resolve_identities(con, settings)

    run("store-2026-11-01.csv", [r for r in STORE[1:] if r[0] != "TR"])
    batch = run("store-2026-11-02.csv", [r for r in STORE[1:] if r[0] == "TR"])
    assert batch["mode"] == "incremental"
    records = "SELECT source, source_record_id, customer_id FROM customer_source_records ORDER BY 1, 2"
    after_batch = con.execute(records).fetchall()
    customer = {rid: cid for _, rid, cid in after_batch}
    assert customer["TA"] == customer["CA"] != customer["TR"] == customer["CR"]
    con, settings = idstage(inbox, tmp_path, con)  # nothing new: the same settings
    resolve_identities(con, settings, full=True, prior=batch["model_prior"])
    assert con.execute(records).fetchall() == after_batch

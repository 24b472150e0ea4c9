"""Emails a till or CRM operator types when a customer gives none (``nomail@x.com``, ``no.email@...``,
``declined@...``) are no key and no contact point: kept, they made nameless receipts one customer whose
profile email was the placeholder. Covers the rule (:func:`identity.graph.is_placeholder`, the SQL the graph,
profiles and erasure run) and its effect on resolution and profiles; not consent."""

from __future__ import annotations

from pathlib import Path

import pytest

from identity.graph import is_placeholder
from identity.profiles import build_customer_profiles
from identity.resolve import resolve_identities


@pytest.mark.parametrize(
    "email",
    [
        "nomail@x.com", "no.email@x.com", "no_email@x.com", "no-email@shop.co.uk", "no.e-mail@x.com",
        "declined@x.com", "refused@x.com", "noname@x.com", "none@x.com", "na@x.com", "not.provided@x.com",
        "no.email.given@x.com", "nothanks@x.com", "noemail1@x.com", "do_not_reply@brand.com", "test.2@x.com",
    ],
)  # fmt: skip
def test_what_an_operator_types_for_no_email_is_a_placeholder(email):
    assert is_placeholder("email_key", email) is True


@pytest.mark.parametrize(
    "email",
    [
        "noel.ward@x.com", "nora@x.com", "declan.no@x.com", "nomad@x.com", "nonna.rossi@x.com", "nil@x.com",
        "anon@x.com", "n.o@x.com", "emailme@x.com", "user123@x.com", "tester@x.com", "noemailer@x.com",
        # initials and names that fold into a placeholder word: a person's mailbox all the same
        "n.a@company.com", "a.b.c@lawfirm.co.uk", "x.x@x.com", "t.est@x.com", "sam.ple@x.com", "e.mail@x.com",
        "noone@noone.ie",
    ],
)  # fmt: skip
def test_real_looking_mailboxes_are_not_placeholders(email):
    assert is_placeholder("email_key", email) is False


#: Three nameless receipts of three customers who gave no email at the till, each typed a little differently.
RECEIPTS = [
    ("transaction_id", "transaction_time", "store_id", "email", "amount", "currency"),
    ("T1", "2026-10-02 10:00:00", "S1", "nomail@x.com", "30.00", "GBP"),
    ("T2", "2026-10-03 11:00:00", "S1", "nomail@x.com", "45.00", "GBP"),
    ("T3", "2026-10-04 12:00:00", "S2", "No.Email@x.com", "15.00", "GBP"),
]


def test_nameless_receipts_sharing_a_placeholder_email_stay_apart_and_show_no_email(
    tmp_path: Path, idstage, idcsv, idowners
) -> None:  # type: ignore[no-untyped-def]
    idcsv(tmp_path / "inbox" / "store" / "store-2026-11-01.csv", RECEIPTS)
    con, settings = idstage(tmp_path / "inbox", tmp_path)
    resolve_identities(con, settings)
    assert len(set(idowners(con).values())) == 3
    build_customer_profiles(con, settings)
    assert con.execute("SELECT count(*), count(email) FROM customer_profiles").fetchall() == [(3, 0)]

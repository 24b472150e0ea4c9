"""The model's contact guard: two named records that each carry their own mailbox and phone, with no date
of birth tying them, are not joined on name and address alone, and a receipt matched to both is ambiguous.
Covers the ``cdp_contacts_disagree`` macro and its use in full runs; not the identifier graph's key guards."""

from __future__ import annotations

import duckdb
import pytest

from identity.graph import install_macros
from identity.resolve import resolve_identities


@pytest.mark.parametrize(
    ("a", "b", "disagree"),
    [
        # (email, phone, dob, first name) of each side
        (("anna.b@x.com", "+447700900001", None, "ann"), ("bea.c@y.com", "+447700900002", None, "ann"), True),
        (("anna.b@x.com", "+447700900001", "1961-08-01", "ann"), ("bea.c@y.com", "+447700900002", None, "ann"), True),
        (("anna.b@x.com", "+447700900001", "1961-08-01", "ann"), ("bea.c@y.com", "+447700900002", "1961-08-01", "ann"),
         False),  # one person, a date of birth ties them
        (("p.mason@x.com", "+447700900001", "1999-03-03", "paul"),
         ("paula.m@y.com", "+447700900002", "1999-03-03", "paula"), True),  # twins: born the same day
        (("p.mason@x.com", "+447700900001", "1999-03-03", "paul"),
         ("paula.m@y.com", "+447700900002", "1999-03-03", None), False),  # no first name to tell them apart
        # one phone; one mailbox
        (("anna.b@x.com", "+447700900001", None, "ann"), ("bea.c@y.com", "+447700900001", None, "ann"), False),
        (("anna.b@x.com", "+447700900001", None, "ann"), ("anna.b@x.com", "+447700900002", None, "ann"), False),
        (("anna.b@x.com", None, None, "ann"), ("bea.c@y.com", "+447700900002", None, "ann"), False),  # no phone
        (("test@example.com", "+447700900001", None, "ann"), ("bea.c@y.com", "+447700900002", None, "ann"), False),
    ],
)  # fmt: skip
def test_contacts_disagree_needs_two_own_mailboxes_and_phones_and_no_date_of_birth_tying_them(a, b, disagree):
    con = duckdb.connect()
    install_macros(con)
    side = "{{'email_key': ?, 'phone_e164': ?, 'dob': ?::DATE, 'first_name': ?, 'first_cands': [?]}}"
    got = con.execute(
        f"SELECT cdp_contacts_disagree({side.format()}, {side.format()})", [*a, a[3], *b, b[3]]
    ).fetchall()[0][0]
    assert got is disagree


def _customers(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], str]:
    rows = con.execute("SELECT source, source_record_id, customer_id FROM customer_source_records").fetchall()
    return {(s, r): c for s, r, c in rows}


HOME = dict(first_name="amelia", last_name="wood", postcode="NG123AX", address_line1="8 victoria drive")


def _household(rec_, second_phone: str | None) -> list[dict]:
    """A contact with a date of birth, a second contact of the same name and address with a mailbox of its
    own (and ``second_phone``), and a receipt with that name at that postcode."""
    return [
        rec_("crm", "c1", date_of_birth="1961-08-01", email_key="wood.amelia@sky.com", phone_e164="+447835304189",
             **HOME),
        rec_("crm", "c2", email_key="wood.amelia@hotmail.co.uk", phone_e164=second_phone, **HOME),
        rec_("store", "t1", first_name="amelia", last_name="wood", postcode="NG123AX"),
    ]  # fmt: skip


def test_a_second_contact_without_a_phone_of_its_own_is_the_same_person(idcon, stg, rec_, idsettings):
    stg(_household(rec_, second_phone=None))
    resolve_identities(idcon, idsettings)
    ids = _customers(idcon)
    assert ids["crm", "c1"] == ids["crm", "c2"] == ids["store", "t1"]


def test_namesakes_with_their_own_contacts_stay_apart_and_their_receipt_joins_neither(idcon, stg, rec_, idsettings):
    # With a phone of its own as well, nothing but name and address ties the second contact to the first:
    # two customers, and the receipt, which could be either's, joins neither.
    stg(_household(rec_, second_phone="+447867757032"))
    stats = resolve_identities(idcon, idsettings)
    ids = _customers(idcon)
    assert len({ids["crm", "c1"], ids["crm", "c2"], ids["store", "t1"]}) == 3
    assert stats["model_pairs_vetoed"] >= 1 and stats["model_ambiguous_units"] >= 1


def test_twins_born_the_same_day_with_their_own_contacts_are_two_customers(idcon, stg, rec_, idsettings):
    home = dict(last_name="mason", postcode="LS61AA", address_line1="3 elm grove", date_of_birth="1999-03-03")
    stg([
        rec_("crm", "p1", first_name="paul", email_key="p.mason@sky.com", phone_e164="+447835304100", **home),
        rec_("crm", "p2", first_name="paula", email_key="paula.m@hotmail.co.uk", phone_e164="+447867757000", **home),
        # One person's two contacts: a new mailbox and a new phone, one first name and birthday.
        rec_("crm", "f1", first_name="francis", email_key="f.hale@sky.com", phone_e164="+447835304111",
             last_name="hale", postcode="YO11AA", address_line1="9 low lane", date_of_birth="1980-05-05"),
        rec_("crm", "f2", first_name="francis", email_key="francis.h@gmail.com", phone_e164="+447867757111",
             last_name="hale", postcode="YO11AA", address_line1="9 low lane", date_of_birth="1980-05-05"),
    ])  # fmt: skip
    resolve_identities(idcon, idsettings)
    ids = _customers(idcon)
    assert ids["crm", "p1"] != ids["crm", "p2"]
    assert ids["crm", "f1"] == ids["crm", "f2"]
    # `cdp identity explain` says why: the contact guard, not just "different customers".
    from identity.explain import explain_pair

    notes = explain_pair(idcon, ("crm", "p1"), ("crm", "p2")).notes
    assert any(n.startswith("the contact guard keeps them apart") for n in notes), notes

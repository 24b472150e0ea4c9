"""Golden records and traits of ``customer_profiles`` on a hand-made staging layer; not identity matching."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import duckdb
import pandas as pd
import pytest

from cdp.config import Settings
from identity.profiles import build_customer_profiles


def add_record(con: duckdb.DuckDBPyConnection, customer_id: str, source: str, rid: str, when: str, **values):
    unit = f"{source}:{rid}"  # one record a unit, of the record's customer (as identity assigns units)
    row = {
        "source": source,
        "source_record_id": rid,
        "unit_id": unit,
        "record_time": datetime.fromisoformat(when),
        **values,
    }
    cols = ", ".join(row)
    con.execute(f"INSERT INTO stg_records ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    con.execute(
        "INSERT INTO customer_source_records VALUES (?, ?, ?, ?)",
        [source, rid, customer_id, unit],
    )


@pytest.fixture
def con(staging_ddl):
    con = duckdb.connect(":memory:")
    con.execute(staging_ddl["stg_records"])
    con.execute(staging_ddl["customer_source_records"])
    # c1: CRM contact (older) and a newer store till entry with a different, typed name.
    add_record(
        con,
        "c1",
        "crm",
        "crm1",
        "2026-01-01 10:00",
        crm_id="crm1",
        first_name="mary-jane",
        last_name="o connor",
        email="mj@mail.co.uk",
        email_key="mj@mail.co.uk",
        phone_e164="+447911100001",
        date_of_birth="1980-05-04",
        postcode="SW1A1AA",
    )
    add_record(
        con,
        "c1",
        "store",
        "t1",
        "2026-03-01 12:00",
        first_name="mary",
        last_name="oconnor",
        email="mary.new@mail.co.uk",
        phone_e164="+447911100099",
        postcode="E11AA",
        amount=Decimal("20.00"),
        store_id="s1",
    )
    add_record(con, "c1", "store", "t2", "2026-03-05 12:00", amount=Decimal("5.50"), store_id="s2")
    add_record(
        con,
        "c1",
        "web",
        "w1",
        "2026-02-01 09:00",
        event_type="purchase",
        order_id="o1",
        amount=Decimal("30.00"),
        anonymous_id="a1",
    )
    add_record(
        con,
        "c1",
        "app",
        "p1",
        "2026-02-01 09:01",
        event_type="purchase",
        order_id="o1",
        amount=Decimal("30.00"),
        device_id="d1",
    )
    add_record(con, "c1", "app", "p2", "2026-04-01 08:00", event_type="app_open", device_id="d2")
    # c2: web only, no purchase, a CRM record with an empty first name.
    add_record(
        con,
        "c2",
        "web",
        "w2",
        "2026-01-10 09:00",
        event_type="page_view",
        anonymous_id="a2",
        email="bob@mail.co.uk",
        email_key="bob@mail.co.uk",
    )
    add_record(con, "c2", "crm", "crm2", "2025-12-01 09:00", crm_id="crm2", first_name=" ", last_name="smith")
    return con


def profiles(con):
    build_customer_profiles(con, Settings())
    df = con.execute("SELECT * FROM customer_profiles").df()
    return {r["customer_id"]: r for r in df.to_dict("records")}


def test_trusted_source_wins_over_newer_untrusted_value(con):
    p = profiles(con)["c1"]
    assert (p["first_name"], p["last_name"]) == ("Mary-Jane", "O Connor")
    assert p["first_name_source"] == "crm" and p["first_name_at"] == datetime(2026, 1, 1, 10)
    assert p["email"] == "mj@mail.co.uk" and p["phone"] == "+447911100001"
    assert str(p["date_of_birth"])[:10] == "1980-05-04" and p["postcode"] == "SW1A1AA"


def test_survivorship_order_is_configurable(con):
    build_customer_profiles(con, Settings(survivorship=("store", "crm", "app", "web")))
    first, email, source = con.execute(
        "SELECT first_name, email, email_source FROM customer_profiles WHERE customer_id = 'c1'"
    ).fetchall()[0]
    assert (first, email, source) == ("Mary", "mary.new@mail.co.uk", "store")


def test_empty_values_never_survive(con):
    p = profiles(con)["c2"]
    assert p["first_name"] is None and p["last_name"] == "Smith" and p["email"] == "bob@mail.co.uk"
    assert p["email_source"] == "web"


def test_traits_count_orders_once_across_channels(con):
    p = profiles(con)["c1"]
    assert p["orders"] == 3  # web+app purchase of o1 is one order, plus two store transactions
    assert p["total_spend"] == Decimal("55.50")
    assert p["stores_visited"] == 2
    assert list(p["channels"]) == ["app", "store", "web"]
    assert p["last_purchase_at"] == datetime(2026, 3, 5, 12) and p["first_seen"] == datetime(2026, 1, 1, 10)
    assert p["last_seen"] == datetime(2026, 4, 1, 8) and p["device_id"] == "d2"
    q = profiles(con)["c2"]
    assert q["orders"] == 0 and q["total_spend"] == 0 and pd.isna(q["last_purchase_at"])
    assert list(q["channels"]) == ["web"]


def test_counts_are_returned_without_personal_data(con):
    assert build_customer_profiles(con, Settings()) == {"profiles": 2, "records": 8}


def test_mobile_is_the_best_mobile_number_not_a_landline(con):
    add_record(con, "c2", "store", "t9", "2026-02-02 10:00", phone_e164="+447911100123")
    con.execute("UPDATE stg_records SET phone_e164 = '+442079460000' WHERE source_record_id = 'crm2'")
    p = profiles(con)
    assert p["c2"]["phone"] == "+442079460000" and p["c2"]["phone_source"] == "crm"  # the trusted source
    assert p["c2"]["mobile"] == "+447911100123" and p["c2"]["mobile_source"] == "store"
    assert p["c1"]["mobile"] == p["c1"]["phone"] == "+447911100001"


def test_a_number_too_short_for_its_plan_decides_nothing_for_a_mobile_sharing_its_first_digits():
    """Kinds were read once per eight-character prefix: whichever number came first decided for the others,
    so a valid mobile after a short one was no mobile (no SMS contact point), and a short one after a mobile
    was exported as one."""
    from identity.profiles import phone_kinds

    for phones in (["+44797382150", "+447973821556"], ["+447973821556", "+44797382155"]):
        kinds = dict(zip(phones, phone_kinds(phones)["mobile"], strict=True))
        assert kinds == {p: len(p) == 13 for p in phones}


def test_placeholder_contact_points_never_survive(staging_ddl):
    """A CRM form's "noemail@noemail.com" and 07000 000000 lose to a newer, less trusted real address."""
    con = duckdb.connect(":memory:")
    con.execute(staging_ddl["stg_records"])
    con.execute(staging_ddl["customer_source_records"])
    add_record(con, "c9", "crm", "crm9", "2026-01-01 10:00", crm_id="crm9", first_name="dave",
               email="noemail@noemail.com", email_key="noemail@noemail.com", phone_e164="+447000000000")  # fmt: skip
    add_record(con, "c9", "web", "w9", "2026-02-01 10:00", anonymous_id="a9", event_type="login",
               email="dave.kent@mailbox.co.uk", email_key="davekent@mailbox.co.uk")  # fmt: skip
    add_record(con, "c9", "store", "t9", "2026-03-01 10:00", phone_e164="+447911100401", amount=Decimal("5.00"))
    build_customer_profiles(con, Settings())
    email, phone = con.execute("SELECT email, phone FROM customer_profiles WHERE customer_id = 'c9'").fetchone()
    assert (email, phone) == ("dave.kent@mailbox.co.uk", "+447911100401")


def test_a_refund_under_its_orders_id_takes_that_orders_spend_back(con):
    """A refund sent as a purchase event with its order's id was folded into the order (its largest amount),
    so the order kept its whole spend; an amount in '$' (which dollar?) counted as pounds; and an order of no
    amount counted in the average order value's denominator."""
    common = {"event_type": "purchase", "anonymous_id": "a9"}
    add_record(con, "c9", "web", "w-x2", "2026-01-06 10:00", order_id="X2", amount=Decimal("100.00"), **common)
    add_record(con, "c9", "app", "a-x2", "2026-01-06 10:01", order_id="X2", amount=Decimal("100.00"), **common)
    add_record(con, "c9", "web", "w-x2r", "2026-01-07 10:00", order_id="X2", amount=Decimal("-100.00"), **common)
    add_record(con, "c9", "web", "w-x3", "2026-01-08 10:00", order_id="X3", amount=Decimal("500"), currency="$",
               **common)  # fmt: skip
    add_record(con, "c9", "store", "t-9", "2026-01-09 10:00", amount=Decimal("30.00"), store_id="s1")
    add_record(con, "c9", "store", "t-10", "2026-01-10 10:00", store_id="s1")  # an amount the till did not send
    p = profiles(con)["c9"]
    assert (p["orders"], p["total_spend"], p["orders_in_other_currencies"]) == (4, Decimal("30.00"), 1)
    assert p["average_order_value"] == Decimal("15.00")  # 30 over X2 (refunded) and t-9
    assert p["last_purchase_at"] == datetime(2026, 1, 10, 10)


def test_an_amount_in_dollars_is_the_installations_own_when_it_sells_in_dollars(con):
    """Ingestion keeps '$' as the currency of '$12.50' with no code: in a store selling in pounds that is an
    order in another currency, in one selling in US dollars it is spend."""
    common = {"event_type": "purchase", "anonymous_id": "a9"}
    add_record(con, "c9", "web", "w-1", "2026-01-06 10:00", order_id="D1", amount=Decimal("12.50"), currency="$",
               **common)  # fmt: skip
    add_record(con, "c9", "web", "w-2", "2026-01-07 10:00", order_id="D2", amount=Decimal("7.50"), currency="USD",
               **common)  # fmt: skip
    for currency, spend, other in (("GBP", Decimal("0.00"), 2), ("USD", Decimal("20.00"), 0)):
        build_customer_profiles(con, Settings(currency=currency))
        row = con.execute(
            "SELECT total_spend, orders_in_other_currencies FROM customer_profiles WHERE customer_id = 'c9'"
        ).fetchall()
        assert row == [(spend, other)], currency


def test_a_refund_lowers_the_spend_and_is_no_order(con):
    add_record(con, "c1", "store", "t9", "2026-04-02 12:00", amount=Decimal("-20.00"), store_id="s1")
    p = profiles(con)["c1"]
    assert p["orders"] == 3 and p["total_spend"] == Decimal("35.50")
    assert float(p["average_order_value"]) == pytest.approx(11.83)
    assert p["last_purchase_at"] == datetime(2026, 3, 5, 12)  # the refund is not a purchase

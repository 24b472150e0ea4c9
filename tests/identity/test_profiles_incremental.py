"""Incremental customer_profiles: updating the changed customers equals a full rebuild; not survivorship rules.

A hand-made staging layer of four customers; each test changes records or links as an identity run would,
updates the profiles of the customers identity would report, and compares with a full rebuild.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import duckdb
import pandas as pd
import pytest

import identity.profiles as profiles
from cdp.config import Settings
from identity.profiles import build_customer_profiles, profiles_current


def add(con: duckdb.DuckDBPyConnection, customer_id: str, source: str, rid: str, day: int, **values) -> None:
    row = {"source": source, "source_record_id": rid, "unit_id": f"{source}:{rid}",
           "record_time": datetime(2026, 1, day, 9), **values}  # fmt: skip
    if "email" in row:
        row["email_key"] = row["email"]
    con.execute(f"INSERT INTO stg_records ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    con.execute("INSERT INTO customer_source_records VALUES (?, ?, ?, ?)", [source, rid, customer_id, row["unit_id"]])


@pytest.fixture
def con(staging_ddl: dict[str, str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute(staging_ddl["stg_records"])
    con.execute(staging_ddl["customer_source_records"])
    add(con, "c1", "crm", "crm1", 1, crm_id="crm1", first_name="ann", last_name="lee", email="ann@mail.co.uk",
        phone_e164="+447911100001", postcode="SW1A1AA")  # fmt: skip
    add(con, "c1", "web", "w1", 2, event_type="purchase", order_id="o1", amount=Decimal("30.00"), anonymous_id="a1")
    add(con, "c1", "app", "p1", 2, event_type="purchase", order_id="o1", amount=Decimal("30.00"), device_id="d1")
    add(con, "c2", "store", "t2", 3, first_name="bo", phone_e164="+442071234567", amount=Decimal("12.50"),
        store_id="s1")  # fmt: skip
    add(con, "c2", "web", "w2", 4, event_type="page_view", anonymous_id="a2", email="bo@mail.co.uk")
    add(con, "c3", "crm", "crm3", 1, crm_id="crm3", first_name="cy", email="cy@mail.co.uk")
    add(con, "c4", "app", "p4", 5, event_type="app_open", device_id="d4", phone_e164="+447911100004")
    build_customer_profiles(con, Settings())
    return con


def profiles_frame(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute("SELECT * FROM customer_profiles ORDER BY customer_id").df().reset_index(drop=True)


def update(con: duckdb.DuckDBPyConnection, changed: list[str], settings: Settings | None = None) -> dict[str, int]:
    con.execute("CREATE OR REPLACE TEMP TABLE _changed AS SELECT unnest(?::VARCHAR[]) AS customer_id", [changed])
    return build_customer_profiles(con, settings or Settings(), "_changed")


def assert_equals_full_rebuild(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    incremental = profiles_frame(con)
    build_customer_profiles(con, Settings())
    pd.testing.assert_frame_equal(incremental, profiles_frame(con))
    return incremental


def mark_untouched(con: duckdb.DuckDBPyConnection, customer_id: str) -> None:
    """Scribble on a profile an update must leave alone; a full rebuild puts it right."""
    con.execute("UPDATE customer_profiles SET city = 'untouched' WHERE customer_id = ?", [customer_id])


def untouched(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("SELECT customer_id FROM customer_profiles WHERE city = 'untouched'").fetchall()
    return {r[0] for r in rows}


def test_records_added_to_a_customer_recompute_that_customer(con):
    for c in ("c1", "c2", "c3", "c4"):
        mark_untouched(con, c)
    add(con, "c2", "crm", "crm2", 6, crm_id="crm2", first_name="bob", last_name="stone", city="leeds")
    add(con, "c2", "store", "t2b", 7, amount=Decimal("7.50"), store_id="s2", phone_e164="+447911100002")
    counts = update(con, ["c2"])
    assert counts == {"profiles": 4, "records": 9, "customers_recomputed": 1}
    assert untouched(con) == {"c1", "c3", "c4"}
    con.execute("UPDATE customer_profiles SET city = NULL WHERE city = 'untouched'")
    frame = assert_equals_full_rebuild(con).set_index("customer_id")
    assert frame.loc["c2", "first_name"] == "Bob" and frame.loc["c2", "orders"] == 2
    assert frame.loc["c2", "mobile"] == "+447911100002"


def test_new_customer_gets_a_profile(con):
    add(con, "c5", "web", "w5", 8, event_type="sign_up", anonymous_id="a5", email="eve@mail.co.uk")
    counts = update(con, ["c5"])
    assert counts["profiles"] == 5 and counts["customers_recomputed"] == 1
    assert_equals_full_rebuild(con)


def test_merge_removes_the_retired_profile_and_combines_the_records(con):
    con.execute("UPDATE customer_source_records SET customer_id = 'c1' WHERE customer_id = 'c2'")
    counts = update(con, ["c1", "c2"])
    frame = assert_equals_full_rebuild(con).set_index("customer_id")
    assert "c2" not in frame.index and counts["profiles"] == 3
    assert frame.loc["c1", "orders"] == 2 and frame.loc["c1", "channels"].tolist() == ["app", "store", "web"]


def test_split_moves_records_to_a_new_customer(con):
    con.execute("UPDATE customer_source_records SET customer_id = 'c6' WHERE source_record_id = 'w2'")
    update(con, ["c2", "c6"])
    frame = assert_equals_full_rebuild(con).set_index("customer_id")
    assert frame.loc["c6", "email"] == "bo@mail.co.uk" and frame.loc["c2", "email"] is None


def test_only_phones_of_prefixes_not_seen_before_are_classified(con, monkeypatch):
    """A prefix and length is classified once (phone_prefix_kinds), by the smallest of its numbers: an update
    parses a number of a new prefix only, and only when one of the affected customers holds it."""
    seen: list[str] = []

    def spy(phones: list[str]) -> pd.DataFrame:
        seen.extend(phones)
        return real(phones)

    real = profiles.phone_kinds
    monkeypatch.setattr(profiles, "phone_kinds", spy)
    add(con, "c4", "store", "t4", 9, phone_e164="+447911100044", store_id="s1", amount=Decimal("3.00"))
    add(con, "c4", "store", "t5", 9, phone_e164="+447700900124", store_id="s1", amount=Decimal("3.00"))
    add(con, "c4", "store", "t6", 9, phone_e164="+447700900123", store_id="s1", amount=Decimal("3.00"))
    add(con, "c2", "store", "t7", 9, phone_e164="+447623900123", store_id="s1", amount=Decimal("3.00"))
    update(con, ["c4"])
    assert seen == ["+447700900123"]  # +4479111 with 13 characters was classified by the first build
    stored = con.execute("SELECT length, mobile FROM phone_prefix_kinds WHERE prefix = '+4477009'").fetchall()
    assert stored == [(13, bool(real(["+447700900123"])["mobile"][0]))]
    seen.clear()
    update(con, ["c4"])
    assert seen == []
    update(con, ["c2"])
    assert seen == ["+447623900123"]
    assert_equals_full_rebuild(con)


def test_another_phonenumbers_release_classifies_every_prefix_again(con, monkeypatch):
    import phonenumbers

    monkeypatch.setattr(phonenumbers, "__version__", "0.0.0-next")
    update(con, ["c4"])
    assert con.execute("SELECT DISTINCT metadata FROM phone_prefix_kinds").fetchall() == [("0.0.0-next",)]


def test_changed_survivorship_order_needs_a_full_rebuild(con):
    other = Settings(survivorship=("store", "crm", "app", "web"))
    assert profiles_current(con, Settings()) and not profiles_current(con, other)
    with pytest.raises(ValueError, match="rebuild it in full"):
        update(con, ["c1"], settings=other)
    with pytest.raises(ValueError, match="not a table name"):
        build_customer_profiles(con, Settings(), "_changed; DROP TABLE customer_profiles")
    build_customer_profiles(con, other)
    assert profiles_current(con, other)


def test_an_edit_to_the_profile_code_needs_a_full_rebuild(con, monkeypatch):
    # The stored fingerprint carries a digest of identity/profiles.py: a changed survivorship rule reaches
    # every customer on the next build, whether or not its author bumped _PROFILES_VERSION.
    from identity import profiles

    assert profiles_current(con, Settings())
    monkeypatch.setattr(profiles, "code_digest", lambda *files: "edited")
    assert not profiles_current(con, Settings())
    build_customer_profiles(con, Settings())
    assert profiles_current(con, Settings())


def test_no_changed_customer_reads_and_writes_nothing_but_still_marks_the_consumer(con, monkeypatch):
    """A run with nothing new: no phone is classified, no profile rewritten; the change consumer is marked."""
    monkeypatch.setattr(profiles, "phone_kinds", lambda phones: pytest.fail("no phone to classify"))
    before = profiles_frame(con)
    con.execute("CREATE OR REPLACE TEMP TABLE _changed (customer_id VARCHAR)")
    marked: list[duckdb.DuckDBPyConnection] = []
    counts = build_customer_profiles(con, Settings(), "_changed", before_commit=marked.append)
    assert marked == [con]
    assert counts == {"profiles": 4, "records": 7, "customers_recomputed": 0}
    pd.testing.assert_frame_equal(before, profiles_frame(con))
    left = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_profile_customers'").fetchall()
    assert left == [(0,)]

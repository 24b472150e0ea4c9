"""Fixtures of the consent tests: a tiny world of staging tables with the contract schemas, seven customers.

Tests reach the helpers below through the ``w`` fixture (pytest runs with ``--import-mode=importlib``, so
test modules cannot import each other).

Customers (ids are the identity owner's ``customer_id``):

* ``cA`` CRM contact + web visits; grants email and sms marketing through email and phone.
* ``cB`` CRM contact (email from CRM) who shops in store with the household phone; granted email via CRM id,
  then withdrew at a store with the household phone.
* ``cC`` store customer sharing the household phone; granted email through their own email after that.
* ``cD`` CRM contact with no consent events at all.
* ``cE`` web customer with an email grant, under an active restriction.
* ``cF`` app customer with a device and a push opt-in, an email grant via user id, but no email address.
* ``cG`` CRM contact; an earlier grant by an email never seen before lands before the record is known.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from cdp.config import Settings
from consent.ledger import sync_ledger
from consent.restriction import ensure_restrictions
from consent.state import build_consent_state
from identity.changes import record_changes
from identity.profiles import build_customer_profiles
from identity.resolve import ensure_identity_schema

HOUSEHOLD = "+447911100999"
T0 = datetime(2026, 1, 1, 9)


def at(day: int, hour: int = 9) -> datetime:
    return datetime(2026, 1, day, hour)


def add_record(con: duckdb.DuckDBPyConnection, customer_id: str, source: str, rid: str, when: datetime, **v):
    row = {"source": source, "source_record_id": rid, "record_time": when, "unit_id": f"{source}:{rid}", **v}
    if "email" in row and "email_key" not in row:
        row["email_key"] = row["email"]
    con.execute(f"INSERT INTO stg_records ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    con.execute("INSERT INTO customer_source_records VALUES (?, ?, ?, ?)", [source, rid, customer_id, row["unit_id"]])


def add_consent(con: duckdb.DuckDBPyConnection, cid: str, when: datetime, purpose: str, status: str, **ids):
    row = {
        "consent_id": cid,
        "event_time": when,
        "purpose": purpose,
        "status": status,
        "source": "crm",
        **ids,
    }
    if "email" in row and "email_key" not in row:
        row["email_key"] = row["email"]
    con.execute(f"INSERT INTO stg_consent ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def rebuild(con: duckdb.DuckDBPyConnection, as_of: datetime | None = None) -> dict[str, int]:
    build_customer_profiles(con, Settings())
    sync_ledger(con)
    return build_consent_state(con, as_of=as_of)


def make_world(con: duckdb.DuckDBPyConnection, ddl: dict[str, str]) -> None:
    """The seven customers above, on empty tables made from ``ddl`` (the root conftest's ``staging_ddl``)."""
    for table in ("stg_records", "stg_consent", "customer_source_records"):
        con.execute(ddl[table])
    ensure_restrictions(con)
    add_record(con, "cA", "crm", "crmA", T0, crm_id="crmA", user_id="uA", email="alee@mailbox.com",
               phone_e164="+447911100001", first_name="ann", last_name="archer")  # fmt: skip
    add_record(con, "cA", "web", "wA", at(2), anonymous_id="anonA", user_id="uA", event_type="login")
    add_record(con, "cB", "crm", "crmB", T0, crm_id="crmB", email="blee@mailbox.com", loyalty_id="LB",
               first_name="bob", last_name="baker")  # fmt: skip
    add_record(con, "cB", "store", "tB", at(3), loyalty_id="LB", phone_e164=HOUSEHOLD, store_id="s1",
               amount=10)  # fmt: skip
    add_record(con, "cC", "store", "tC", at(3), email="clee@mailbox.com", phone_e164=HOUSEHOLD, store_id="s1",
               first_name="cat", amount=250)  # fmt: skip
    add_record(con, "cD", "crm", "crmD", T0, crm_id="crmD", email="dlee@mailbox.com", first_name="dee")
    add_record(con, "cE", "web", "wE", at(2), anonymous_id="anonE", email="elee@mailbox.com")
    add_record(con, "cF", "app", "pF", at(2), device_id="devF", user_id="uF", event_type="app_open")
    add_record(con, "cF", "app", "pF2", at(4), device_id="devF", event_type="push_opt_in")
    add_record(con, "cG", "crm", "crmG", T0, crm_id="crmG", email="glee@mailbox.com")

    add_consent(con, "k1", at(1), "email_marketing", "granted", email="alee@mailbox.com")
    add_consent(con, "k2", at(1), "sms_marketing", "granted", phone_e164="+447911100001")
    add_consent(con, "k3", at(1), "email_marketing", "granted", crm_id="crmB")
    add_consent(con, "k4", at(5), "email_marketing", "withdrawn", phone_e164=HOUSEHOLD)  # at a store
    add_consent(con, "k5", at(6), "email_marketing", "granted", email="clee@mailbox.com")
    add_consent(con, "k6", at(1), "sms_marketing", "granted", phone_e164=HOUSEHOLD)  # ambiguous grant
    add_consent(con, "k7", at(1), "email_marketing", "granted", email="elee@mailbox.com")
    add_consent(con, "k8", at(1), "email_marketing", "granted", user_id="uF")
    add_consent(con, "k9", at(1), "email_marketing", "granted", email="glee@mailbox.com")
    con.execute("INSERT INTO restrictions VALUES ('cE', 'req-1', 'restriction', ?, NULL)", [at(7)])


def identity_run(con: duckdb.DuckDBPyConnection, run_id: str, finished: datetime, changed: list[str] | None) -> None:
    """What an identity run leaves for its consumers: its identity_runs row and its changed customers (None:
    a full run, everyone)."""
    ensure_identity_schema(con)
    con.execute(
        "INSERT INTO identity_runs (run_id, started_at, finished_at) VALUES (?, ?, ?)", [run_id, finished, finished]
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _run_changed AS SELECT unnest(?::VARCHAR[]) AS c", [changed or []])
    record_changes(con, run_id, None if changed is None else "SELECT c FROM _run_changed")


def states(con: duckdb.DuckDBPyConnection, purpose: str) -> dict[str, str]:
    return dict(con.execute("SELECT customer_id, status FROM consent_state WHERE purpose = ?", [purpose]).fetchall())


@pytest.fixture
def con(staging_ddl: dict[str, str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    make_world(con, staging_ddl)
    rebuild(con, as_of=at(20))
    return con


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "big_spenders.yaml").write_text(
        "name: big_spenders\ndescription: Spent 100 or more\nwhere:\n  all:\n    - total_spend >= 100\n"
        "fields: [first_name, total_spend]\nactivations: [email_marketing]\n"
    )
    return Settings(db_path=tmp_path / "cdp.duckdb", home=tmp_path / "home", segments_dir=segments)


@pytest.fixture
def w(staging_ddl: dict[str, str]) -> SimpleNamespace:
    """The world's helpers: at, rebuild, add_record, add_consent, make_world, identity_run, states, HOUSEHOLD."""
    return SimpleNamespace(
        at=at, rebuild=rebuild, add_record=add_record, add_consent=add_consent,
        make_world=functools.partial(make_world, ddl=staging_ddl), identity_run=identity_run,
        states=states, HOUSEHOLD=HOUSEHOLD,
    )  # fmt: skip

"""The changed-customer log: what each consumer has not taken in yet, full rebuilds, invalidation, pruning."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from identity import changes
from identity.resolve import ensure_identity_schema


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    ensure_identity_schema(con)
    changes.ensure_changes_schema(con)
    return con


def _run(con: duckdb.DuckDBPyConnection, run_id: str, minute: int, customers: list[str] | None) -> None:
    at = datetime(2026, 11, 1, 12, minute)
    con.execute("INSERT INTO identity_runs (run_id, started_at, finished_at) VALUES (?, ?, ?)", [run_id, at, at])
    values = " UNION ALL ".join(f"SELECT '{c}'" for c in customers) if customers else None
    changes.record_changes(con, run_id, values)


def _pending(con: duckdb.DuckDBPyConnection, consumer: str) -> tuple[bool, set[str]]:
    full = changes.pending_customers(con, consumer)
    return full, {r[0] for r in con.execute("SELECT customer_id FROM _changed_customers").fetchall()}


def test_consumers_see_what_changed_since_they_last_looked_and_consumed_changes_are_pruned(con) -> None:
    _run(con, "r1", 1, None)  # a full rebuild
    assert _pending(con, "profiles") == (True, set())  # never looked: full
    changes.mark_consumed(con, "profiles")
    changes.mark_consumed(con, "consent")
    _run(con, "r2", 2, ["cus_1", "cus_2"])
    _run(con, "r3", 3, ["cus_2", "cus_3"])
    assert _pending(con, "profiles") == (False, {"cus_1", "cus_2", "cus_3"})
    changes.mark_consumed(con, "profiles")
    assert _pending(con, "profiles") == (False, set())
    # consent has not looked since r1: r2 and r3 stay until it does, then they go.
    assert con.execute("SELECT count(*) FROM customer_changes WHERE run_id IN ('r2', 'r3')").fetchall()[0][0] == 4
    assert _pending(con, "consent") == (False, {"cus_1", "cus_2", "cus_3"})
    changes.mark_consumed(con, "consent")
    assert con.execute("SELECT count(*) FROM customer_changes").fetchall()[0][0] == 0


def test_a_full_run_or_an_invalidation_makes_every_consumer_rebuild(con) -> None:
    _run(con, "r1", 1, ["cus_1"])
    changes.mark_consumed(con, "profiles")
    _run(con, "r2", 2, None)
    assert _pending(con, "profiles") == (True, set())
    changes.mark_consumed(con, "profiles")
    changes.invalidate(con)
    assert changes.invalidated(con)
    assert _pending(con, "profiles") == (True, set())


def _records(con: duckdb.DuckDBPyConnection, staging_ddl: dict[str, str]) -> None:
    """Three customers' staged records, each unit one record of its customer, as identity assigns them."""
    con.execute(staging_ddl["stg_records"])
    for rid, customer in (("t1", "cus_1"), ("t2", "cus_1"), ("t3", "cus_2"), ("t4", "cus_3")):
        con.execute("INSERT INTO stg_records (source, source_record_id, unit_id) VALUES ('store', ?, ?)", [rid, rid])
        con.execute("INSERT INTO customer_source_records VALUES ('store', ?, ?, ?)", [rid, customer, rid])


def _customers(con: duckdb.DuckDBPyConnection, *ids: str) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE _changed_customers AS SELECT unnest(?::VARCHAR[]) AS customer_id", [ids])


def test_a_runs_consumers_read_the_changed_customers_records_once(con, staging_ddl, monkeypatch) -> None:
    _records(con, staging_ddl)
    _run(con, "r1", 1, ["cus_1", "cus_2"])
    copies: list[str] = []
    copy = changes.changed_records
    monkeypatch.setattr(changes, "changed_records", lambda *a: copies.append(a[1]) or copy(*a))
    _customers(con, "cus_2", "cus_1")
    table = changes.records_of_run(con, "_changed_customers")
    rows = con.execute(f"SELECT customer_id, source_record_id FROM {table} ORDER BY 2").fetchall()
    assert rows == [("cus_1", "t1"), ("cus_1", "t2"), ("cus_2", "t3")]
    _customers(con, "cus_1", "cus_2", "cus_1")  # the second consumer: the same customers, the same run
    assert changes.records_of_run(con, "_changed_customers") == table and len(copies) == 1
    _customers(con, "cus_3")  # other customers: read again
    assert con.execute(f"SELECT customer_id FROM {changes.records_of_run(con, '_changed_customers')}").fetchall() == [
        ("cus_3",)
    ]
    _run(con, "r2", 2, ["cus_3"])  # the same customers after another identity run: read again
    changes.records_of_run(con, "_changed_customers")
    assert len(copies) == 3


def test_no_changed_customer_reads_no_record(con, staging_ddl) -> None:
    _records(con, staging_ddl)
    _run(con, "r1", 1, [])
    _customers(con)
    table = changes.records_of_run(con, "_changed_customers")
    assert con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 0
    assert "customer_id" in {c for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()}

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

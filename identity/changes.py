"""Which customers changed since a consumer last looked: how incremental runs pass work downstream.

Every identity run appends to ``customer_changes(run_id, customer_id)`` the customer ids whose set of
records changed in that run: customers that gained records, new customers, and the old ids of customers
that were merged, split or retired. A full rebuild writes one row with ``customer_id = '*'`` (everything
may have changed). A consumer (the profiles, the consent state) keeps in ``change_consumers`` the last
identity run it has taken in, and asks :func:`pending_customers` for what changed since:

    full = pending_customers(con, "customer_profiles")   # temp table _changed_customers(customer_id)
    ... rebuild everything when full, else only the customers in _changed_customers ...
    mark_consumed(con, "customer_profiles")

Anything that changes records outside an identity run (an erasure) calls :func:`invalidate`, which makes
the next identity run and every consumer rebuild in full.

Only customer ids and run ids are stored here, no personal data.
"""

from __future__ import annotations

import duckdb

from cdp.store import ensure_table, table_exists, unverify

#: Which customer each identity unit belongs to. Every record of a unit is the unit's customer's (identity
#: assigns units, not records), so the profiles and the consent state join ``stg_records`` to this by
#: ``unit_id`` alone, a column stored plain: for 4,463 customers' 31,358 records of the 1M bench, 12 ms
#: against 20 ms by source and source_record_id. Both run after identity in a run; between a staging step
#: and the identity step after it, a unit's new records would count as its customer's already (as a linked
#: record's restaged version did with the record join).
UNIT_CUSTOMERS = "(SELECT DISTINCT unit_id, customer_id FROM customer_source_records)"

#: Every staged record with its customer: the columns of ``stg_records`` and ``customer_id``.
ALL_RECORDS = f"(SELECT * FROM stg_records JOIN {UNIT_CUSTOMERS} USING (unit_id))"


def changed_records(con: duckdb.DuckDBPyConnection, customers: str, into: str) -> str:
    """Temp table ``into``: the staged records of the customers in table ``customers`` (a ``customer_id``
    column), as :data:`ALL_RECORDS` has them; returns ``into``. One pass over ``stg_records``, none when there
    are no customers."""
    some = f"EXISTS (SELECT 1 FROM {customers})"
    if not con.execute(f"SELECT {some}").fetchall()[0][0]:
        some = "false"  # a join with no customers still read every staged record
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {into} AS
            SELECT * FROM stg_records JOIN {unit_customers_of(customers)} USING (unit_id) WHERE {some}"""
    )
    return into


#: The temp tables :func:`records_of_run` fills: the records, and for which customers after which run.
_RUN_RECORDS, _RUN_RECORDS_KEY = "_run_changed_records", "_run_changed_records_key"


def records_of_run(con: duckdb.DuckDBPyConnection, customers: str) -> str:
    """:func:`changed_records` of ``customers``, for the consumers of one pipeline run on its connection.

    The consent state and the profiles each update the customers an identity run changed, from their
    records. Those are scattered through ``stg_records``, so that reading them fetches most of its blocks
    (at 1M records, 55 ms for the consent state's identifiers and 84 ms for the profiles' columns): the
    second consumer of a run, asking for the same customers after the same identity run, reads the first
    one's copy. Only for a run's steps: nothing writes staged records or customers between them (a caller
    that changes them itself calls :func:`changed_records`). The copy lives in the connection (temp tables:
    no personal data reaches the file)."""
    key = f"""SELECT count(*) AS customers, bit_xor(hash(customer_id)) AS ids,
                     (SELECT max_by(run_id, finished_at) FROM identity_runs) AS run_id
              FROM (SELECT DISTINCT customer_id FROM {customers})"""
    if (
        table_exists(con, _RUN_RECORDS_KEY, temporary=True)
        and con.execute(f"SELECT count(*) FROM (FROM {_RUN_RECORDS_KEY} INTERSECT {key})").fetchall()[0][0]
    ):
        return _RUN_RECORDS
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_RUN_RECORDS_KEY} AS {key}")
    return changed_records(con, customers, _RUN_RECORDS)


def unit_customers_of(customers: str) -> str:
    """:data:`UNIT_CUSTOMERS` of the customers in table ``customers`` (a ``customer_id`` column)."""
    return f"""(SELECT DISTINCT unit_id, customer_id FROM customer_source_records
                WHERE customer_id IN (SELECT customer_id FROM {customers}))"""


#: ``customer_id`` of the row a full rebuild writes: every customer may have changed.
EVERYONE = "*"

DDL = [
    "CREATE TABLE IF NOT EXISTS customer_changes (run_id VARCHAR, customer_id VARCHAR)",
    """CREATE TABLE IF NOT EXISTS change_consumers (
        consumer VARCHAR PRIMARY KEY, run_id VARCHAR, consumed_at TIMESTAMP)""",
]


def ensure_changes_schema(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in DDL:
        ensure_table(con, ddl)


def record_changes(con: duckdb.DuckDBPyConnection, run_id: str, customers_sql: str | None) -> int:
    """Append the customers ``customers_sql`` yields (one column of ids) for ``run_id``; ``None``: everyone."""
    ensure_changes_schema(con)
    if customers_sql is None:
        con.execute("INSERT INTO customer_changes VALUES (?, ?)", [run_id, EVERYONE])
        return -1
    con.execute(
        f"INSERT INTO customer_changes SELECT DISTINCT ?, c FROM ({customers_sql}) t(c) WHERE c IS NOT NULL",
        [run_id],
    )
    return int(con.execute("SELECT count(*) FROM customer_changes WHERE run_id = ?", [run_id]).fetchall()[0][0])


def invalidate(con: duckdb.DuckDBPyConnection) -> None:
    """Make the next identity run and every consumer rebuild in full (records changed outside a run), and every
    asset check verify its whole table again (:func:`cdp.store.unverify`)."""
    ensure_changes_schema(con)
    con.execute("INSERT INTO customer_changes VALUES ('invalidated', ?)", [EVERYONE])
    con.execute("DELETE FROM change_consumers")
    unverify(con)


def invalidated(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether :func:`invalidate` was called after the last identity run (which then must be full)."""
    ensure_changes_schema(con)
    return bool(con.execute("SELECT count(*) FROM customer_changes WHERE run_id = 'invalidated'").fetchall()[0][0])


def clear_invalidation(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DELETE FROM customer_changes WHERE run_id = 'invalidated'")


def pending_customers(con: duckdb.DuckDBPyConnection, consumer: str) -> bool:
    """Temp table ``_changed_customers(customer_id)``: customers changed since ``consumer`` last looked.

    Returns True when the consumer must rebuild in full instead: it never looked, an identity run since
    was a full rebuild, or the changes were invalidated. The table is then empty.
    """
    ensure_changes_schema(con)
    seen = con.execute("SELECT run_id FROM change_consumers WHERE consumer = ?", [consumer]).fetchall()
    con.execute("CREATE OR REPLACE TEMP TABLE _changed_customers (customer_id VARCHAR)")
    if not seen:
        return True
    runs = """
        SELECT run_id FROM identity_runs
        WHERE finished_at > (SELECT finished_at FROM identity_runs WHERE run_id = $seen)
        UNION ALL SELECT 'invalidated'
    """
    params = {"seen": seen[0][0]}
    if not con.execute("SELECT count(*) FROM identity_runs WHERE run_id = $seen", params).fetchall()[0][0]:
        return True
    full = con.execute(
        f"SELECT count(*) FROM customer_changes WHERE customer_id = '{EVERYONE}' AND run_id IN ({runs})", params
    ).fetchall()[0][0]
    if full:
        return True
    con.execute(
        f"INSERT INTO _changed_customers SELECT DISTINCT customer_id FROM customer_changes WHERE run_id IN ({runs})",
        params,
    )
    return False


def mark_consumed(con: duckdb.DuckDBPyConnection, consumer: str) -> None:
    """Record that ``consumer`` is up to date with the latest identity run (nothing to record before one)."""
    if not table_exists(con, "identity_runs"):
        return
    ensure_changes_schema(con)
    con.execute(
        """
        INSERT OR REPLACE INTO change_consumers
        SELECT ?, run_id, now()::TIMESTAMP FROM identity_runs ORDER BY finished_at DESC LIMIT 1
        """,
        [consumer],
    )
    # Changes every consumer has taken in are no longer needed (a consumer that never looked rebuilds).
    con.execute(
        """
        DELETE FROM customer_changes WHERE run_id IN (
            SELECT run_id FROM identity_runs WHERE finished_at <= (
                SELECT min(r.finished_at) FROM change_consumers c JOIN identity_runs r USING (run_id)))
        """
    )

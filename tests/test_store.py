"""The store's file and its write-ahead log are readable by their owner only."""

from __future__ import annotations

import os
import stat

import duckdb

from cdp.store import connect, table_exists


def test_the_write_ahead_log_is_owner_only_whatever_the_umask(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = os.umask(0o022)
    try:
        con = connect(tmp_path / "cdp.duckdb")
        con.execute("CREATE TABLE t AS SELECT 'ann@example.com' AS email")  # DuckDB creates the WAL now
        wal = tmp_path / "cdp.duckdb.wal"
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "cdp.duckdb").stat().st_mode) == 0o600
        con.close()
    finally:
        os.umask(before)


def test_opening_the_store_waits_while_a_rewritten_file_is_swapped_in(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    from cdp.store import file_swap_guard

    connect(tmp_path / "cdp.duckdb").close()
    opened = threading.Event()

    def open_store() -> None:
        connect(tmp_path / "cdp.duckdb").close()
        opened.set()

    with file_swap_guard(tmp_path / "cdp.duckdb", exclusive=True):
        opener = threading.Thread(target=open_store)
        opener.start()
        assert not opened.wait(0.3)  # held back while the swap is under way
    assert opened.wait(10)
    opener.join()


def test_code_digest_follows_the_bytes_of_its_files_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cdp.store import code_digest

    a, b = tmp_path / "a.py", tmp_path / "b.csv"
    a.write_text("RULE = 1\n")
    b.write_text("name,canonical\n")
    first = code_digest(a, b)
    assert code_digest(str(a), b) == first and code_digest(b, a) != first
    a.write_text("RULE = 2\n")
    assert code_digest(a, b) != first
    assert code_digest(a, tmp_path / "gone.csv") == code_digest(a, tmp_path / "also-gone.csv")


def test_create_table_as_stores_the_named_columns_uncompressed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from cdp.store import create_table_as

    con = connect(tmp_path / "cdp.duckdb")
    query = (
        "SELECT 'web:' || md5(i::VARCHAR) AS unit_id, 'cus_' || (i % 7) AS customer_id, ? AS n FROM range(5000) t(i)"
    )
    create_table_as(con, "links", query, [3], uncompressed=("unit_id",))
    con.execute("CHECKPOINT")
    stored = dict(
        con.execute(
            """SELECT column_name, string_agg(DISTINCT compression) FROM pragma_storage_info('links')
               WHERE segment_type = 'VARCHAR' GROUP BY 1"""
        ).fetchall()
    )
    assert stored["unit_id"] == "Uncompressed" and stored["customer_id"] != "Uncompressed"
    assert con.execute("SELECT count(*), min(n), max(n) FROM links").fetchall() == [(5000, 3, 3)]
    assert con.execute(f"SELECT count(*) FROM ({query} EXCEPT SELECT * FROM links)", [3]).fetchall() == [(0,)]
    with pytest.raises(ValueError, match="no column user_id"):
        create_table_as(con, "links", query, [3], uncompressed=("user_id",))
    con.close()


def test_table_exists_names_the_stores_own_tables_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    con = connect(tmp_path / "cdp.duckdb")
    con.execute('CREATE TABLE stored (a INTEGER); CREATE TABLE "odd""name" (a INTEGER)')
    con.execute("CREATE TEMP TABLE only_temp (a INTEGER); CREATE VIEW a_view AS SELECT 1 AS a")
    con.execute("ATTACH ':memory:' AS other; CREATE TABLE other.main.elsewhere (a INTEGER)")
    assert table_exists(con, "stored") and table_exists(con, 'odd"name')
    assert not any(table_exists(con, name) for name in ("only_temp", "a_view", "elsewhere", "missing"))
    con.close()
    con = connect(tmp_path / "cdp.duckdb", read_only=True)
    assert table_exists(con, "stored") and not table_exists(con, "missing")
    con.close()


def test_table_exists_leaves_the_callers_transaction_usable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    con = connect(tmp_path / "cdp.duckdb")
    con.execute("CREATE TABLE kept (a INTEGER)")
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO kept VALUES (1)")
    assert not table_exists(con, "missing")  # a failed lookup, inside the transaction
    con.execute("CREATE TABLE made_now (a INTEGER)")
    assert table_exists(con, "made_now")  # seen by the transaction that made it
    con.execute("INSERT INTO kept VALUES (2)")
    con.execute("COMMIT")
    assert con.execute("SELECT count(*) FROM kept").fetchall() == [(2,)]
    con.close()


def test_table_exists_asks_for_a_temp_table_apart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    con = connect(tmp_path / "cdp.duckdb")
    con.execute("CREATE TABLE stored (a INTEGER); CREATE TEMP TABLE only_temp (a INTEGER)")
    assert table_exists(con, "only_temp", temporary=True) and not table_exists(con, "stored", temporary=True)
    con.close()


def test_a_primary_key_made_before_is_dropped_with_every_row_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cdp.store import drop_primary_key

    ddl = "CREATE TABLE IF NOT EXISTS kinds (k VARCHAR USING COMPRESSION uncompressed, v INTEGER)"
    con = connect(tmp_path / "cdp.duckdb")
    assert not drop_primary_key(con, ddl.replace("kinds", "absent"))  # a table not declared yet has no key
    con.execute("CREATE TABLE kinds (k VARCHAR PRIMARY KEY, v INTEGER)")
    con.execute("INSERT INTO kinds SELECT 'k' || i, i FROM range(3000) t(i)")
    assert drop_primary_key(con, ddl)
    assert con.execute("SELECT count(*), sum(v) FROM kinds").fetchall() == [(3000, sum(range(3000)))]
    keys = "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'kinds' AND constraint_type = 'PRIMARY KEY'"
    assert con.execute(keys).fetchall() == [(0,)]
    con.execute("INSERT INTO kinds VALUES ('k1', 1)")  # no key refuses it now
    assert not drop_primary_key(con, ddl)  # looked at once a connection
    con.close()
    con = connect(tmp_path / "cdp.duckdb")
    assert not drop_primary_key(con, ddl)  # nothing to drop
    assert con.execute("SELECT count(*) FROM kinds").fetchall() == [(3001,)]
    assert "__keyed" not in str(con.execute("SELECT table_name FROM duckdb_tables()").fetchall())
    con.close()


def test_ensure_table_declares_a_missing_table_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from cdp.store import ensure_table

    con = connect(tmp_path / "cdp.duckdb")
    con.execute("BEGIN TRANSACTION")
    ensure_table(con, "CREATE TABLE IF NOT EXISTS ledger_x (a INTEGER)")  # declared in the open transaction
    ensure_table(con, "CREATE TABLE IF NOT EXISTS ledger_x (a INTEGER, b INTEGER)")  # seen there: not run
    con.execute("COMMIT")
    assert [c for (c,) in con.execute("SELECT column_name FROM (DESCRIBE ledger_x)").fetchall()] == ["a"]
    with pytest.raises(ValueError, match="declaration if it does not exist was expected"):
        ensure_table(con, "CREATE TABLE ledger_y (a INTEGER)")
    con.close()
    con = connect(tmp_path / "cdp.duckdb", read_only=True)
    ensure_table(con, "CREATE TABLE IF NOT EXISTS ledger_x (a INTEGER)")  # a store read only runs nothing
    with pytest.raises(duckdb.Error):
        ensure_table(con, "CREATE TABLE IF NOT EXISTS ledger_z (a INTEGER)")
    con.close()

"""The store's file and its write-ahead log are readable by their owner only."""

from __future__ import annotations

import os
import stat

from cdp.store import connect


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

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

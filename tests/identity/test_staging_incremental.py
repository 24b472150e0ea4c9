"""Incremental staging restages the keys new batches carry, each as the latest of all its versions ever
ingested: what staging every raw row anew gives."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from cdp.ingest import Ingestor
from cdp.store import connect
from identity.staging import build_staging

BASE = {
    "crm/a.csv": "crm_id,first_name,email,updated_at\nC1,Ann,ann@x.com,2026-02-01T00:00:00\n",
    "web/a.csv": "event_id,event_time,anonymous_id,email\nE1,2026-02-01T10:00:00,cookie-1,ann@x.com\n",
    "consent/a.csv": "consent_id,event_time,purpose,status,email\nK1,2026-02-01T10:00:00,analytics,granted,ann@x.com\n",
}
BATCH = {
    # C1 again, written before the version already staged (an export that arrived late), and a new contact
    "crm/b.csv": "crm_id,first_name,email,updated_at\n"
    "C1,Anne,anne@x.com,2026-01-01T00:00:00\nC2,Bob,bob@x.com,2026-03-01T00:00:00\n",
    # only new events, two versions of one of them
    "web/b.csv": "event_id,event_time,anonymous_id,email\n"
    "E2,2026-03-01T10:00:00,cookie-2,bob@x.com\nE3,2026-03-01T11:00:00,cookie-3,\n"
    "E3,2026-03-01T11:05:00,cookie-3,carl@x.com\n",
    "consent/b.csv": "consent_id,event_time,purpose,status,email\n"
    "K2,2026-03-01T10:00:00,analytics,withdrawn,bob@x.com\n",
}


def _write(inbox: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_text(text)


def _staged(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple]:
    return con.execute(f"SELECT * EXCLUDE (batch_id, file, row_number) FROM {table} ORDER BY ALL").fetchall()


@pytest.fixture
def con(tmp_path: Path):
    con = connect(tmp_path / "cdp.duckdb")
    _write(tmp_path / "inbox", BASE)
    Ingestor(con, b"s" * 32).ingest_inbox(tmp_path / "inbox")
    build_staging(con, "GB", incremental=True)
    con.execute("DELETE FROM stg_unit_changes")  # as identity resolution leaves it
    _write(tmp_path / "inbox", BATCH)
    Ingestor(con, b"s" * 32).ingest_inbox(tmp_path / "inbox")
    yield con
    con.close()


def test_a_batch_is_staged_as_staging_everything_anew_would(con) -> None:  # type: ignore[no-untyped-def]
    build_staging(con, "GB", incremental=True)
    incremental = {table: _staged(con, table) for table in ("stg_records", "stg_consent")}
    changed = {u for (u,) in con.execute("SELECT unit_id FROM stg_unit_changes").fetchall()}
    build_staging(con, "GB", incremental=False)
    assert incremental == {table: _staged(con, table) for table in ("stg_records", "stg_consent")}
    # The late version of C1 lost to the one staged before; E3's later version won.
    names = dict(con.execute("SELECT source_record_id, first_name FROM stg_records WHERE source = 'crm'").fetchall())
    assert names == {"C1": "ann", "C2": "bob"}
    emails = dict(con.execute("SELECT source_record_id, email FROM stg_records WHERE source = 'web'").fetchall())
    assert emails == {"E1": "ann@x.com", "E2": "bob@x.com", "E3": "carl@x.com"}
    # The units of every restaged key changed: C1's (restaged, though its staged row is the same) and the new ones.
    assert changed == {"crm:C1", "crm:C2", "web:cookie-2", "web:cookie-3"}


def test_every_new_file_of_a_source_is_staged_with_its_phones(con, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two new files of a source in one run: each raw table is read by its own new batches, all of them (new
    keys, keys staged before, phones)."""
    _write(
        tmp_path / "inbox",
        {
            "app/c.csv": "event_id,event_time,device_id,phone\nA1,2026-03-02T10:00:00,dev-1,07700 900001\n",
            "app/d.csv": "event_id,event_time,device_id,phone\nA2,2026-03-03T10:00:00,dev-2,07700 900002\n",
            "web/c.csv": "event_id,event_time,anonymous_id,email\nE4,2026-03-02T10:00:00,cookie-4,dan@x.com\n",
            "crm/c.csv": "crm_id,first_name,email,updated_at\nC1,Annie,ann@x.com,2026-04-01T00:00:00\n",
            "crm/d.csv": "crm_id,first_name,email,updated_at\nC2,Bobby,bob@x.com,2026-04-01T00:00:00\n",
        },
    )
    Ingestor(con, b"s" * 32).ingest_inbox(tmp_path / "inbox")
    build_staging(con, "GB", incremental=True)
    incremental = {table: _staged(con, table) for table in ("stg_records", "stg_consent")}
    phones = dict(con.execute("SELECT source_record_id, phone_e164 FROM stg_records WHERE source = 'app'").fetchall())
    assert phones == {"A1": "+447700900001", "A2": "+447700900002"}
    assert {"E2", "E3", "E4"} <= {r for (r,) in con.execute("SELECT source_record_id FROM stg_records").fetchall()}
    names = dict(con.execute("SELECT source_record_id, first_name FROM stg_records WHERE source = 'crm'").fetchall())
    assert names == {"C1": "annie", "C2": "bobby"}
    build_staging(con, "GB", incremental=False)
    assert incremental == {table: _staged(con, table) for table in ("stg_records", "stg_consent")}

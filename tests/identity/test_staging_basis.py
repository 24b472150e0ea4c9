"""Staging remembers the rules it staged under: rows staged under other rules (a new release's standardisers,
another default phone region) are staged anew in full, phone map included, so that an incremental run does
not keep what a full one would change."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdp.ingest import Ingestor
from cdp.store import connect
from identity import staging
from identity.staging import ALL_UNITS, build_staging

CRM = "crm_id,first_name,email,phone\nC1,Ann,ann@x.com,07700 900123\n"


@pytest.fixture
def con(tmp_path: Path):
    (tmp_path / "inbox/crm").mkdir(parents=True)
    (tmp_path / "inbox/crm/a.csv").write_text(CRM)
    con = connect(tmp_path / "cdp.duckdb")
    Ingestor(con, b"s" * 32).ingest_inbox(tmp_path / "inbox")
    build_staging(con, "GB", incremental=True)
    con.execute("DELETE FROM stg_unit_changes")  # as identity resolution leaves it
    yield con
    con.close()


def _staged_phone(con) -> str | None:  # type: ignore[no-untyped-def]
    return con.execute("SELECT phone_e164 FROM stg_records").fetchall()[0][0]


def _changes(con) -> list[str]:  # type: ignore[no-untyped-def]
    return [u for (u,) in con.execute("SELECT DISTINCT unit_id FROM stg_unit_changes").fetchall()]


def test_the_same_rules_stage_incrementally(con) -> None:  # type: ignore[no-untyped-def]
    build_staging(con, "GB", incremental=True)
    assert _changes(con) == []
    assert _staged_phone(con) == "+447700900123"


def test_another_phone_region_restages_everything_with_a_new_phone_map(con) -> None:  # type: ignore[no-untyped-def]
    build_staging(con, "US", incremental=True)
    assert _changes(con) == [ALL_UNITS]  # identity resolves everyone again
    assert _staged_phone(con) != "+447700900123"  # read as a US number now, not from the old map
    assert con.execute("SELECT e164 FROM phone_map").fetchall() == [(_staged_phone(con),)]


def test_changed_standardisation_rules_restage_everything(con, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(staging, "STG_RECORDS_SQL", staging.STG_RECORDS_SQL + " ")
    build_staging(con, "GB", incremental=True)
    assert _changes(con) == [ALL_UNITS]

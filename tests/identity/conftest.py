"""Helpers for the identity tests: tiny ``stg_records`` tables built from a few dicts.

Fixtures are prefixed ``id`` so they never shadow fixtures of other test modules in this folder.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from cdp.config import Settings, load_settings

STG_COLUMNS = {
    "source": "VARCHAR", "source_record_id": "VARCHAR", "unit_id": "VARCHAR", "record_time": "TIMESTAMP",
    "event_type": "VARCHAR", "user_id": "VARCHAR", "loyalty_id": "VARCHAR", "crm_id": "VARCHAR",
    "anonymous_id": "VARCHAR", "device_id": "VARCHAR", "email": "VARCHAR", "email_key": "VARCHAR",
    "phone_e164": "VARCHAR", "first_name": "VARCHAR", "last_name": "VARCHAR", "date_of_birth": "DATE",
    "address_line1": "VARCHAR", "city": "VARCHAR", "postcode": "VARCHAR", "country": "VARCHAR",
    "order_id": "VARCHAR", "amount": "DECIMAL(18,2)", "currency": "VARCHAR", "store_id": "VARCHAR",
    "batch_id": "VARCHAR", "file": "VARCHAR", "row_number": "BIGINT",
}  # fmt: skip

_UNIT_KEY = {"crm": "crm_id", "store": "source_record_id", "web": "anonymous_id", "app": "device_id"}


def rec(source: str, record_id: str, **values: Any) -> dict[str, Any]:
    """One stg_records row; ``unit_id`` follows the staging rule unless given."""
    row: dict[str, Any] = {"source": source, "source_record_id": record_id, **values}
    if source == "crm":
        row.setdefault("crm_id", record_id)
    row.setdefault("unit_id", f"{source}:{row.get(_UNIT_KEY[source]) or record_id}")
    row.setdefault("record_time", "2026-01-01 00:00:00")
    row.setdefault("batch_id", "b1")
    return row


def write_stg(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    """(Re)create ``stg_records`` holding ``rows``."""
    frame = pd.DataFrame([{c: r.get(c) for c in STG_COLUMNS} for r in rows], columns=list(STG_COLUMNS))
    frame = frame.astype("object")
    con.execute("DROP TABLE IF EXISTS stg_records")
    cols = ", ".join(f"{c} {t}" for c, t in STG_COLUMNS.items())
    con.execute(f"CREATE TABLE stg_records ({cols})")
    con.register("_rows", frame)
    casts = ", ".join(f"CAST({c} AS {t})" for c, t in STG_COLUMNS.items())
    con.execute(f"INSERT INTO stg_records SELECT {casts} FROM _rows")
    con.unregister("_rows")


@pytest.fixture
def idcon() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.fixture
def idsettings(tmp_path) -> Settings:
    return Settings(db_path=tmp_path / "t.duckdb", home=tmp_path / "home")


@pytest.fixture
def rec_():
    """The :func:`rec` row builder (test modules cannot import conftest under importlib mode)."""
    return rec


@pytest.fixture
def stg(idcon):
    """Write rows into ``stg_records`` of the test connection: ``stg(rows)``."""
    return lambda rows: write_stg(idcon, rows)


StageInbox = Callable[..., tuple[duckdb.DuckDBPyConnection, Settings]]


@pytest.fixture
def idstage() -> StageInbox:
    """``stage(inbox, root, con=None, **settings)``: ingest every source of a hand-made ``inbox`` into the
    store ``root/cdp.duckdb`` (``con`` if given) and stage it; returns the connection and the settings."""
    from cdp.ingest import Ingestor
    from cdp.store import SOURCES, connect
    from cdp.suppression import load_secret
    from identity.staging import build_staging

    def stage(
        inbox: Path, root: Path, con: duckdb.DuckDBPyConnection | None = None, **overrides: Any
    ) -> tuple[duckdb.DuckDBPyConnection, Settings]:
        settings = load_settings(db_path=root / "cdp.duckdb", home=root / "home", inbox=inbox, **overrides)
        con = con or connect(settings.db_path)
        ingestor = Ingestor(con, load_secret(settings.secret_path), settings.default_region, lambda _m: None)
        for source in SOURCES:
            ingestor.ingest_source(inbox, source)
        build_staging(con, incremental=True)
        return con, settings

    return stage


@pytest.fixture
def idcsv() -> Callable[[Path, list[tuple[str, ...]]], None]:
    """``write(path, rows)``: one CSV file of a hand-made inbox (UTF-8; folders made as needed)."""
    import csv

    def write(path: Path, rows: list[tuple[str, ...]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)

    return write


@pytest.fixture
def idowners() -> Callable[[duckdb.DuckDBPyConnection], dict[str, str]]:
    """``owners(con)``: each source record's customer after resolution (source_record_id -> customer_id)."""

    def owners(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
        return dict(con.execute("SELECT source_record_id, customer_id FROM customer_source_records").fetchall())

    return owners


@pytest.fixture
def idconsent() -> Callable[[duckdb.DuckDBPyConnection, datetime], Callable[[str, str], list[tuple[str, str]]]]:
    """``consent_of = compute(con, as_of)``: the ledger synced and consent state computed as of ``as_of``;
    then ``consent_of(customer_id, purpose)`` is that customer's ``[(status, via)]`` for the purpose."""
    from consent.ledger import sync_ledger
    from consent.state import build_consent_state

    def compute(con: duckdb.DuckDBPyConnection, as_of: datetime) -> Callable[[str, str], list[tuple[str, str]]]:
        sync_ledger(con)
        build_consent_state(con, as_of=as_of)

        def consent_of(customer_id: str, purpose: str) -> list[tuple[str, str]]:
            return con.execute(
                "SELECT status, via FROM consent_state WHERE customer_id = ? AND purpose = ?", [customer_id, purpose]
            ).fetchall()

        return consent_of

    return compute

"""Fixtures shared by the test packages (pytest runs with ``--import-mode=importlib``, so test modules and
conftest files cannot import each other: what several packages need is a fixture here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from cdp.config import Settings


@pytest.fixture(scope="session")
def staging_ddl() -> dict[str, str]:
    """``CREATE TABLE`` statements of ``stg_records``, ``stg_consent`` and ``customer_source_records``, read
    off what staging and identity build, so that hand-made test worlds keep the product's schemas."""
    from cdp.store import ensure_core_schema
    from identity.resolve import ensure_identity_schema
    from identity.staging import build_staging

    scratch = duckdb.connect()
    try:
        ensure_core_schema(scratch)
        build_staging(scratch)  # from empty raw tables: no rows, the real columns and types
        ensure_identity_schema(scratch)
        ddl = {}
        for table in ("stg_records", "stg_consent", "customer_source_records"):
            columns = scratch.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [table],
            ).fetchall()
            ddl[table] = f"CREATE TABLE {table} ({', '.join(f'{name} {kind}' for name, kind in columns)})"
        return ddl
    finally:
        scratch.close()


def _no_model_pairs(con: duckdb.DuckDBPyConnection, *_args: object, **_kwargs: object) -> dict[str, int]:
    """Identity by the deterministic graph only: the Splink model is not what these tests are about, and a
    tiny world with shared addresses is exactly where a probabilistic match could wander."""
    from identity.model import empty_pair_tables

    empty_pair_tables(con)
    return {"model_pairs": 0}


def _run_plain(con: duckdb.DuckDBPyConnection, settings: Settings, inbox: Path) -> dict[str, int]:
    """Ingest, stage, resolve (graph only), profile, ledger, state: the pipeline's plain functions, in order.
    Returns the ingested row counts."""
    from cdp.ingest import Ingestor
    from cdp.suppression import store_secret
    from consent.ledger import sync_ledger
    from consent.state import build_consent_state
    from identity.profiles import build_customer_profiles
    from identity.resolve import resolve_identities
    from identity.staging import build_staging

    summary = Ingestor(con, store_secret(con, settings.secret_path), settings.default_region).ingest_inbox(inbox)
    build_staging(con, settings.default_region)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("identity.model.predict_pairs", _no_model_pairs)
        resolve_identities(con, settings)
    build_customer_profiles(con, settings)
    sync_ledger(con)
    build_consent_state(con)
    return {
        "suppressed": summary.count("rows_suppressed"),
        "loaded": summary.count("rows_loaded"),
        "quarantined": summary.count("rows_quarantined"),
    }


@pytest.fixture(scope="session")
def no_model_pairs() -> Callable[..., dict[str, int]]:
    """A stand-in for ``identity.model.predict_pairs``: identity by the deterministic graph alone."""
    return _no_model_pairs


@pytest.fixture(scope="session")
def plain_pipeline() -> Callable[[duckdb.DuckDBPyConnection, Settings, Path], dict[str, int]]:
    """The pipeline without Dagster, for worlds built once and copied per test."""
    return _run_plain

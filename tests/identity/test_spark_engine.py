"""The Spark engine gives the same customers as the DuckDB engine on a small generated world.

Splink scores on a local Spark session (``local[2]``, one per module); ingestion, staging, the precision
guards and the clustering run in DuckDB as always. Needs Java (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from cdp.config import load_settings
from cdp.errors import CdpError
from cdp.generate import generate_world
from cdp.ingest import Ingestor
from cdp.store import ensure_core_schema
from identity.resolve import resolve_identities
from identity.staging import build_staging

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="the Spark engine needs Java (none on PATH)")


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    from identity.spark import spark_session

    cwd = tmp_path_factory.mktemp("spark-cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)  # for the module's tests: a local session must leave nothing in the working folder
        session = spark_session("local[2]", driver_memory="1g")
        yield session
        session.stop()
    assert not (cwd / "spark-warehouse").exists()


@pytest.fixture(scope="module")
def inbox(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spark") / "inbox"
    generate_world(folder, customers=150, seed=23)
    return folder


def _staged(inbox: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    ensure_core_schema(con)
    Ingestor(con, secret=b"spark-engine-test").ingest_inbox(inbox)
    build_staging(con)
    return con


def _partition(con: duckdb.DuckDBPyConnection) -> set[frozenset[str]]:
    rows = con.execute(
        "SELECT customer_id, list(DISTINCT unit_id) FROM customer_source_records GROUP BY customer_id"
    ).fetchall()
    return {frozenset(units) for _, units in rows}


def test_spark_engine_gives_the_same_customers_as_duckdb(inbox, spark, tmp_path):
    settings = load_settings(db_path=tmp_path / "unused.duckdb", home=tmp_path)
    results = {}
    for engine in ("duckdb", "spark"):
        con = _staged(inbox)
        try:
            stats = resolve_identities(con, settings.with_overrides(engine=engine), spark=spark)
            results[engine] = (_partition(con), stats)
        finally:
            con.close()
    (duck, duck_stats), (sparked, spark_stats) = results["duckdb"], results["spark"]
    # The model links something here, so equal partitions say the Spark scores matched DuckDB's.
    assert duck_stats["model_pairs"] > 0
    assert spark_stats["model_pairs"] == duck_stats["model_pairs"]
    assert sum(len(c) > 1 for c in duck) > 0
    assert sparked == duck


def test_spark_reads_the_person_units_from_parquet_in_the_staging_folder(inbox, spark, tmp_path):
    from identity.spark import STAGING_CONF

    settings = load_settings(db_path=tmp_path / "unused.duckdb", home=tmp_path)
    staging = tmp_path / "staging"
    partitions = []
    for engine in ("duckdb", "spark"):
        con = _staged(inbox)
        try:
            if engine == "spark":
                spark.conf.set(STAGING_CONF, str(staging))
            resolve_identities(con, settings.with_overrides(engine=engine), spark=spark)
            partitions.append(_partition(con))
        finally:
            spark.conf.unset(STAGING_CONF)
            con.close()
    assert partitions[0] == partitions[1]
    # The units went through the folder as Parquet, and the copy is gone once scored.
    assert staging.is_dir() and not list(staging.iterdir())


def test_unknown_engine_is_a_one_line_error(tmp_path):
    with pytest.raises(CdpError, match="engine: 'flink' is not one of duckdb, spark"):
        load_settings(db_path=tmp_path / "x.duckdb", engine="flink")

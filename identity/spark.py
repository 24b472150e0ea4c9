"""The Spark engine: the same Splink person model, run by Splink's Spark backend.

The comparisons and blocking rules are written once, in DuckDB's dialect (:mod:`identity.model`).
:func:`spark_model` translates a settings dictionary for Spark with sqlglot, then renames the few
functions whose Spark equivalents are Splink's own Scala UDFs (registered by ``SparkAPI``) or have
another name in Spark SQL. Only the scoring runs on Spark: the person units are read from the DuckDB
store, and the scored pairs come back to DuckDB for the precision guards and the clustering.

Point it at a cluster with ``spark_master`` (``CDP_SPARK_MASTER``), e.g. ``spark://host:7077``. With
``spark_staging`` (``CDP_SPARK_STAGING``), a folder the executors can read, the person units are written
there as Parquet and Spark reads them from it instead of receiving them from the driver's memory.

>>> to_spark_sql("jaro_winkler_similarity(a_l, a_r) >= 0.9 AND list_has_any(c_l, c_r)")
'jaro_winkler(a_l, a_r) >= 0.9 AND arrays_overlap(c_l, c_r)'
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

#: DuckDB functions with no same-named Spark function: the name Spark knows them by.
#: ``jaro_winkler`` and ``damerau_levenshtein`` are Splink's Scala UDFs.
_RENAMES: dict[type[exp.Expression], str] = {
    exp.JarowinklerSimilarity: "jaro_winkler",
    exp.ArrayOverlaps: "arrays_overlap",
}


def _rename(node: exp.Expression) -> exp.Expression:
    for kind, name in _RENAMES.items():
        if isinstance(node, kind):
            args = [node.this, node.expression]
            return exp.Anonymous(this=name, expressions=[a for a in args if a is not None])
    return node


def to_spark_sql(sql: str) -> str:
    """One SQL condition or blocking rule, from DuckDB's dialect to Spark's."""
    if sql.strip().upper() == "ELSE":
        return sql
    tree = sqlglot.parse_one(sql, read="duckdb").transform(_rename)
    return tree.sql(dialect="spark", normalize_functions="lower")


def spark_model(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Splink settings dictionary (trained or not) with its SQL in Spark's dialect."""
    model = copy.deepcopy(settings)
    model["sql_dialect"] = "spark"
    for comparison in model["comparisons"]:
        for level in comparison["comparison_levels"]:
            level["sql_condition"] = to_spark_sql(level["sql_condition"])
            level.pop("sql_dialect", None)
    rules = []
    for rule in model.get("blocking_rules_to_generate_predictions", []):
        text = rule["blocking_rule"] if isinstance(rule, dict) else rule
        rules.append({"blocking_rule": to_spark_sql(text), "sql_dialect": "spark"})
    model["blocking_rules_to_generate_predictions"] = rules
    return model


#: Spark configuration key holding the Parquet staging folder of the session (``Settings.spark_staging``).
STAGING_CONF = "spark.cdp.staging"


def spark_input(spark: Any, frame: Any) -> tuple[Any, Callable[[], None]]:
    """What Splink's ``SparkAPI`` registers for the arrow table ``frame``, and how to clean up after it.

    With a staging folder on the session (:data:`STAGING_CONF`) the rows are written there as one Parquet
    file and Spark reads that file (executors read it directly, the driver does not ship the rows);
    otherwise the arrow table itself, which Spark takes from the driver.
    """
    folder = spark.conf.get(STAGING_CONF, "")
    if not folder:
        return frame, lambda: None
    import pyarrow.parquet as pq

    path = Path(folder) / f"person_units-{uuid.uuid4().hex[:12]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(frame, path)
    return spark.read.parquet(str(path)), lambda: path.unlink(missing_ok=True)


def spark_session(master: str = "local[2]", driver_memory: str = "1g", staging: str = "") -> Any:
    """A Spark session (or the running one) with Splink's similarity UDF jar and a checkpoint folder;
    ``staging``: the Parquet folder for :func:`spark_input`."""
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    builder = (
        SparkSession.builder.master(master)
        .appName("cdp-identity")
        .config("spark.jars", similarity_jar_location())
        .config("spark.driver.memory", driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2" if master.startswith("local") else "200")
    )
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
        # Splink keeps no tables in a warehouse; without this, Spark leaves spark-warehouse/ in the cwd.
        warehouse = tempfile.mkdtemp(prefix="cdp-spark-warehouse-")
        atexit.register(shutil.rmtree, warehouse, True)
        builder = builder.config("spark.sql.warehouse.dir", warehouse)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if staging:
        spark.conf.set(STAGING_CONF, staging)
    if spark.sparkContext.getCheckpointDir() is None:
        # Splink writes its intermediate tables here (parquet); removed when the process ends.
        folder = tempfile.mkdtemp(prefix="cdp-spark-")
        atexit.register(shutil.rmtree, folder, True)
        spark.sparkContext.setCheckpointDir(folder)
    return spark

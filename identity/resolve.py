"""Identity resolution: graph edges plus Splink pairs, clustered into customers with stable ids.

``resolve_identities(con, settings)`` reads ``stg_records`` and (re)writes:

- ``customer_source_records(source, source_record_id, customer_id, unit_id)``: one row per staged record.
- ``identity_edges(unit_id_l, unit_id_r, evidence, rule, match_weight, run_id)``: why units are one
  customer: a key *type* (``user_id``, ``email_key``...) and its rule, or ``splink`` and the match weight.
  Edges name units, never key values, so erasing a record's unit removes its edges.
- ``customer_id_history(old_customer_id, new_customer_id, reason, run_id, changed_at)``: appended;
  ``merged`` (the old customer now lives inside the new one), ``split`` (part of the old customer moved
  to the new one), ``retired`` (none of the old customer's records remain).
- ``identity_runs``: one row per run with its counts.

Clustering: connected components of the identifier graph's edges and the model's pairs at or above
``settings.match_threshold`` (a match probability, compared as the equivalent match weight; the prior in
that weight is measured on each run's data). One more precision guard: a cluster holding two records
that disagree on who they are loses its model pairs and is recomputed from the rest.

Stable ids: every cluster of this run votes with its units for the customer ids those units had in the
previous run; an old id goes to the cluster holding most of its units (ties: the cluster with the
smaller anchor unit), and a cluster takes at most one old id (the one with most votes). Clusters left
without an id get fresh sequential ids in the order of their smallest unit id, so the same input gives
the same ids and new batches leave untouched customers alone.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from cdp.config import Settings
from identity import graph, model

ID_PREFIX = "cus_"
#: A cluster with more CRM contacts or online accounts than this is reported as an outlier (CRM exports
#: duplicate a contact up to four times in the worlds we measured; one person has one online account,
#: two at most).
OUTLIER_CRM_CONTACTS = 4
OUTLIER_ACCOUNTS = 2
#: ... and so is a cluster with more units than this (a person's cookies, devices and receipts).
OUTLIER_UNITS = 500

DDL = [
    """CREATE TABLE IF NOT EXISTS customer_source_records (
        source VARCHAR, source_record_id VARCHAR, customer_id VARCHAR, unit_id VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS identity_edges (
        unit_id_l VARCHAR, unit_id_r VARCHAR, evidence VARCHAR, rule VARCHAR, match_weight DOUBLE,
        run_id VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS customer_id_history (
        old_customer_id VARCHAR, new_customer_id VARCHAR, reason VARCHAR, run_id VARCHAR,
        changed_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS identity_runs (
        run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, model VARCHAR,
        match_threshold DOUBLE, records BIGINT, units BIGINT, customers BIGINT, new_customers BIGINT,
        merged BIGINT, split BIGINT, retired BIGINT, last_sequence BIGINT, stats JSON)""",
]


def ensure_identity_schema(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in DDL:
        con.execute(ddl)


def _label(con: duckdb.DuckDBPyConnection, edges_sql: str) -> None:
    """Temp table ``_clusters(unit_id, anchor)``: connected components of the edges ``edges_sql`` yields."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(con.execute("SELECT count(*) FROM _unit_index").fetchall()[0][0])
    pairs = con.execute(
        f"""
        WITH e AS ({edges_sql})
        SELECT l.ix AS a, r.ix AS b FROM e
        JOIN _unit_index l ON l.unit_id = e.unit_id_l JOIN _unit_index r ON r.unit_id = e.unit_id_r
        """
    ).fetchnumpy()
    a = np.asarray(pairs["a"], dtype=np.int64)
    b = np.asarray(pairs["b"], dtype=np.int64)
    matrix = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(matrix, directed=False)
    # The anchor of a component is its smallest unit id: units are indexed in unit_id order, so it is the
    # smallest index carrying the label.
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    frame = pd.DataFrame({"ix": np.arange(n, dtype=np.int64), "anchor_ix": first[labels]})
    con.register("_labels_frame", frame)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _clusters AS
        SELECT u.unit_id, a.unit_id AS anchor
        FROM _labels_frame f JOIN _unit_index u ON u.ix = f.ix JOIN _unit_index a ON a.ix = f.anchor_ix
        """
    )
    con.unregister("_labels_frame")


def _conflicting_clusters(con: duckdb.DuckDBPyConnection, among: str = "") -> int:
    """Temp table ``_conflicts(anchor)``: clusters holding two person units that disagree on who they are.

    ``among`` optionally restricts the check to units of a temp table of unit ids this module made.
    """
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _conflicts AS
        WITH p AS (
            SELECT DISTINCT c.anchor, {graph.who("u")} AS who
            FROM _clusters c JOIN _units u USING (unit_id)
            WHERE (u.first_name IS NOT NULL OR u.dob IS NOT NULL OR u.user_id IS NOT NULL OR u.loyalty_id IS NOT NULL)
              {f"AND u.unit_id IN (SELECT unit_id FROM {among})" if among else ""}
        ),
        multi AS (SELECT anchor FROM p GROUP BY anchor HAVING count(*) > 1)
        SELECT DISTINCT a.anchor FROM p a JOIN p b ON a.anchor = b.anchor AND hash(a.who) < hash(b.who)
        WHERE a.anchor IN (SELECT anchor FROM multi) AND cdp_disagree(a.who, b.who)
        """
    )
    return int(con.execute("SELECT count(*) FROM _conflicts").fetchall()[0][0])


def _components(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Cluster units over graph and model edges, with one precision guard.

    A customer must not hold two records that disagree on who they are. When model pairs chain two
    people together (father and son of one name at one address, each linked to a nameless-dob receipt),
    the model edges inside that cluster are dropped and the cluster is recomputed from the rest; the
    identifier graph, whose keys were already guarded, stays. Writes ``_clusters`` and ``_kept_model_edges``.
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _unit_index AS "
        "SELECT unit_id, (row_number() OVER (ORDER BY unit_id) - 1)::BIGINT AS ix FROM _units"
    )
    both = "SELECT unit_id_l, unit_id_r FROM _graph_edges UNION SELECT unit_id_l, unit_id_r FROM _model_edges"
    _label(con, both)
    conflicted = _conflicting_clusters(con)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _kept_model_edges AS
        SELECT m.* FROM _model_edges m JOIN _clusters c ON c.unit_id = m.unit_id_l
        WHERE c.anchor NOT IN (SELECT anchor FROM _conflicts)
        """
    )
    dropped = int(con.execute("SELECT (SELECT count(*) FROM _model_edges) - (SELECT count(*) FROM _kept_model_edges)")
                  .fetchall()[0][0])  # fmt: skip
    remaining = 0
    if conflicted:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _conflict_units AS "
            "SELECT unit_id FROM _clusters WHERE anchor IN (SELECT anchor FROM _conflicts)"
        )
        _label(
            con,
            "SELECT unit_id_l, unit_id_r FROM _graph_edges UNION SELECT unit_id_l, unit_id_r FROM _kept_model_edges",
        )
        remaining = _conflicting_clusters(con, among="_conflict_units")
    return {
        "conflicting_clusters": conflicted,
        "model_pairs_dropped_in_conflicts": dropped,
        "conflicting_customers_after_guard": remaining,
    }


def _last_sequence(con: duckdb.DuckDBPyConnection) -> int:
    seq = con.execute("SELECT coalesce(max(last_sequence), 0) FROM identity_runs").fetchall()[0][0]
    pattern = f"^{ID_PREFIX}(\\d+)$"
    for sql in (
        "SELECT max(TRY_CAST(regexp_extract(customer_id, ?, 1) AS BIGINT)) FROM customer_source_records",
        "SELECT max(TRY_CAST(regexp_extract(new_customer_id, ?, 1) AS BIGINT)) FROM customer_id_history",
        "SELECT max(TRY_CAST(regexp_extract(old_customer_id, ?, 1) AS BIGINT)) FROM customer_id_history",
    ):
        found = con.execute(sql, [pattern]).fetchall()[0][0]
        seq = max(seq, int(found or 0))
    return int(seq)


def _assign_ids(con: duckdb.DuckDBPyConnection, run_id: str, now: datetime) -> dict[str, int]:
    """Temp table ``_assignment(unit_id, customer_id)``; appends merges/splits/retirements to history."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _prev AS "
        "SELECT unit_id, min(customer_id) AS customer_id FROM customer_source_records GROUP BY unit_id"
    )
    votes = con.execute(
        """
        SELECT c.anchor, p.customer_id, count(*) AS n
        FROM _clusters c JOIN _prev p USING (unit_id) GROUP BY ALL
        ORDER BY n DESC, p.customer_id, c.anchor
        """
    ).fetchall()
    kept: dict[str, str] = {}  # anchor -> inherited id
    taken: set[str] = set()
    for anchor, customer_id, _ in votes:
        if anchor in kept or customer_id in taken:
            continue
        kept[anchor] = customer_id
        taken.add(customer_id)
    anchors = [row[0] for row in con.execute("SELECT DISTINCT anchor FROM _clusters ORDER BY anchor").fetchall()]
    seq = _last_sequence(con)
    ids: dict[str, str] = {}
    new = 0
    for anchor in anchors:
        if anchor in kept:
            ids[anchor] = kept[anchor]
        else:
            seq += 1
            new += 1
            ids[anchor] = f"{ID_PREFIX}{seq:09d}"
    con.register("_ids_frame", pd.DataFrame({"anchor": list(ids), "customer_id": list(ids.values())}))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _assignment AS "
        "SELECT c.unit_id, i.customer_id FROM _clusters c JOIN _ids_frame i USING (anchor)"
    )
    con.unregister("_ids_frame")
    moves = con.execute(
        """
        SELECT DISTINCT p.customer_id AS old_id, a.customer_id AS new_id
        FROM _prev p JOIN _assignment a USING (unit_id) WHERE p.customer_id <> a.customer_id
        ORDER BY 1, 2
        """
    ).fetchall()
    still = set(ids.values())
    history = [(old, new_id, "split" if old in still else "merged") for old, new_id in moves]
    retired = con.execute(
        """
        SELECT DISTINCT customer_id FROM _prev
        WHERE customer_id NOT IN (SELECT customer_id FROM _assignment)
          AND unit_id NOT IN (SELECT unit_id FROM _assignment)
        ORDER BY 1
        """
    ).fetchall()
    moved_away = {old for old, _, _ in history}
    history += [(old, None, "retired") for (old,) in retired if old not in moved_away]
    if history:
        con.executemany(
            "INSERT INTO customer_id_history VALUES (?, ?, ?, ?, ?)",
            [(old, new_id, reason, run_id, now) for old, new_id, reason in history],
        )
    return {
        "customers": len(ids),
        "new_customers": new,
        "kept_customers": len(kept),
        "merged": sum(1 for h in history if h[2] == "merged"),
        "split": sum(1 for h in history if h[2] == "split"),
        "retired": sum(1 for h in history if h[2] == "retired"),
        "last_sequence": seq,
    }


def _outliers(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    row = con.execute(
        f"""
        WITH per AS (
            SELECT a.customer_id, count(*) AS units,
                   count(*) FILTER (WHERE u.source = 'crm') AS crm_contacts
            FROM _assignment a JOIN _units u USING (unit_id) GROUP BY 1
        ),
        accounts AS (
            SELECT a.customer_id, count(DISTINCT k.id_value) AS accounts
            FROM _assignment a JOIN _unit_keys k USING (unit_id) WHERE k.id_type = 'user_id' GROUP BY 1
        )
        SELECT max(units), count(*) FILTER (WHERE units > 1),
               count(*) FILTER (WHERE units > {OUTLIER_UNITS} OR crm_contacts > {OUTLIER_CRM_CONTACTS}
                                   OR coalesce(accounts, 0) > {OUTLIER_ACCOUNTS})
        FROM per LEFT JOIN accounts USING (customer_id)
        """
    ).fetchall()[0]
    return {"largest_customer_units": int(row[0] or 0), "multi_unit_customers": int(row[1] or 0),
            "outlier_customers": int(row[2] or 0)}  # fmt: skip


def resolve_identities(
    con: duckdb.DuckDBPyConnection, settings: Settings, model_path: Path = model.MODEL_PATH, spark: Any = None
) -> dict[str, Any]:
    """Resolve ``stg_records`` into customers (see module docstring). Returns counts only.

    ``model_path`` is the trained Splink model (the versioned one in the repo unless a bench says else).
    With ``settings.engine == "spark"`` Splink scores on Spark: on ``spark`` when given, else on a session
    at ``settings.spark_master`` (see :mod:`identity.spark`).
    """
    if settings.engine == "spark" and spark is None:
        from identity.spark import spark_session

        spark = spark_session(settings.spark_master)
    started = time.perf_counter()
    started_at = datetime.now(UTC).replace(tzinfo=None)
    run_id = started_at.strftime("idr_%Y%m%dT%H%M%S_") + uuid.uuid4().hex[:8]
    ensure_identity_schema(con)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    stats: dict[str, Any] = dict(graph.build_graph(con, settings.max_records_per_identifier))
    timings["graph_seconds"] = round(time.perf_counter() - t, 2)

    threshold_weight = model.probability_to_weight(settings.match_threshold)
    stats.update(
        model.predict_pairs(
            con,
            threshold_weight,
            model_path,
            threads=settings.threads,
            memory_limit=settings.memory_limit,
            reuse_units=True,
            spark=spark if settings.engine == "spark" else None,
        )
    )

    t = time.perf_counter()
    stats.update(_components(con))
    timings["cluster_seconds"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    try:
        ids = _assign_ids(con, run_id, started_at)
        con.execute("DELETE FROM customer_source_records")
        con.execute(
            """
            INSERT INTO customer_source_records
            SELECT s.source, s.source_record_id, a.customer_id, s.unit_id
            FROM stg_records s JOIN _assignment a USING (unit_id)
            """
        )
        con.execute("DELETE FROM identity_edges")
        con.execute(
            """
            INSERT INTO identity_edges
            SELECT unit_id_l, unit_id_r, evidence, rule, NULL, ? FROM _graph_edges
            UNION ALL
            SELECT unit_id_l, unit_id_r, 'splink', 'match_weight >= threshold', match_weight, ?
            FROM _kept_model_edges
            """,
            [run_id, run_id],
        )
        stats.update(ids)
        stats.update(_outliers(con))
        counts = con.execute("SELECT count(*), count(DISTINCT unit_id) FROM stg_records").fetchall()[0]
        stats["records"], stats["units"] = int(counts[0]), int(counts[1])
        stats["identity_edges"] = int(con.execute("SELECT count(*) FROM identity_edges").fetchall()[0][0])
        timings["write_seconds"] = round(time.perf_counter() - t, 2)
        stats.update(timings)
        stats["seconds"] = round(time.perf_counter() - started, 2)
        con.execute(
            "INSERT INTO identity_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id, started_at, datetime.now(UTC).replace(tzinfo=None), model.MODEL_NAME,
                settings.match_threshold, stats["records"], stats["units"], ids["customers"],
                ids["new_customers"], ids["merged"], ids["split"], ids["retired"], ids["last_sequence"],
                json.dumps(stats),
            ],
        )  # fmt: skip
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    stats["run_id"] = run_id
    return stats

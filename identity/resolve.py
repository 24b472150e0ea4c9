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
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from cdp.config import Settings
from cdp.store import UNCOMPRESSED, code_digest, create_table_as, table_exists, transaction
from identity import changes, graph, model
from identity.staging import ALL_UNITS, UNIT_CHANGES_DDL

#: Tables an incremental run builds on (rewritten by every full run, updated by incremental ones).
STATE_TABLES = ("identity_units", "identity_unit_keys", "identity_model_pairs", "identity_customer_sizes")

ID_PREFIX = "cus_"
#: A cluster with more CRM contacts or online accounts than this is reported as an outlier (CRM exports
#: duplicate a contact up to four times in the worlds we measured; one person has one online account,
#: two at most).
OUTLIER_CRM_CONTACTS = 4
OUTLIER_ACCOUNTS = 2
#: ... and so is a cluster with more units than this (a person's cookies, devices and receipts).
OUTLIER_UNITS = 500

# The id columns incremental runs look rows up by are stored plain (cdp.store.UNCOMPRESSED), here and in the
# state tables (_store_state). A full run drops and declares the first two tables anew, so that a store made
# before takes these options too.
DDL = [
    f"""CREATE TABLE IF NOT EXISTS customer_source_records (
        source VARCHAR, source_record_id VARCHAR {UNCOMPRESSED}, customer_id VARCHAR {UNCOMPRESSED},
        unit_id VARCHAR {UNCOMPRESSED})""",
    f"""CREATE TABLE IF NOT EXISTS identity_edges (
        unit_id_l VARCHAR {UNCOMPRESSED}, unit_id_r VARCHAR {UNCOMPRESSED}, evidence VARCHAR, rule VARCHAR,
        match_weight DOUBLE, run_id VARCHAR)""",
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
    con.execute(UNIT_CHANGES_DDL)


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
    frame = pd.DataFrame(
        {"ix": np.arange(n, dtype=np.int64), "anchor_ix": first[labels], "component": labels.astype(np.int64)}
    )
    con.register("_labels_frame", frame)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _clusters AS
        SELECT u.unit_id, a.unit_id AS anchor, f.component
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
    identifier graph, whose keys were already guarded, stays. Writes ``_clusters``, ``_pass1`` (the first
    pass's component of every unit) and ``_kept_model_edges``.
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _unit_index AS "
        "SELECT unit_id, (row_number() OVER (ORDER BY unit_id) - 1)::BIGINT AS ix FROM _units"
    )
    both = "SELECT unit_id_l, unit_id_r FROM _graph_edges UNION SELECT unit_id_l, unit_id_r FROM _model_edges"
    _label(con, both)
    # The first pass's components are what an incremental run re-resolves as a whole (see _resolve_changed).
    con.execute("CREATE OR REPLACE TEMP TABLE _pass1 AS SELECT unit_id, component FROM _clusters")
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


def _last_sequence(con: duckdb.DuckDBPyConnection, incremental: bool) -> int:
    """The highest customer id sequence issued so far. Every run records the highest it issued; a full run also
    reads the ids in the tables (an id issued outside a run is never issued again). An incremental run builds
    on the previous run's row, which already took them into account."""
    seq = con.execute("SELECT coalesce(max(last_sequence), 0) FROM identity_runs").fetchall()[0][0]
    if incremental:
        return int(seq)
    pattern = f"^{ID_PREFIX}(\\d+)$"
    for sql in (
        "SELECT max(TRY_CAST(regexp_extract(customer_id, ?, 1) AS BIGINT)) FROM customer_source_records",
        "SELECT max(TRY_CAST(regexp_extract(new_customer_id, ?, 1) AS BIGINT)) FROM customer_id_history",
        "SELECT max(TRY_CAST(regexp_extract(old_customer_id, ?, 1) AS BIGINT)) FROM customer_id_history",
    ):
        found = con.execute(sql, [pattern]).fetchall()[0][0]
        seq = max(seq, int(found or 0))
    return int(seq)


def _assign_ids(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    now: datetime,
    scope: str | None = None,
    links: str = "customer_source_records",
) -> dict[str, int]:
    """Temp table ``_assignment(unit_id, customer_id)``; appends merges/splits/retirements to history.

    ``scope`` (a table of unit ids holding whole customers of the previous run) limits the vote to those
    units' previous customers: an incremental run re-resolves only them. ``links``: where the previous
    customers are read (``unit_id``, ``customer_id``), ``customer_source_records`` or a temp table holding
    its rows for at least the scope.
    """
    where = f"WHERE unit_id IN (SELECT unit_id FROM {scope})" if scope else ""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _prev AS "
        f"SELECT unit_id, min(customer_id) AS customer_id FROM {links} {where} GROUP BY unit_id"
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
    seq = _last_sequence(con, incremental=scope is not None)
    ids: dict[str, str] = {}
    new = 0
    for anchor in anchors:
        if anchor in kept:
            ids[anchor] = kept[anchor]
        else:
            seq += 1
            new += 1
            ids[anchor] = f"{ID_PREFIX}{seq:09d}"
    con.register("_ids_frame", pd.DataFrame({"anchor": list(ids), "customer_id": list(ids.values())}, dtype=object))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _assignment AS "
        "SELECT c.unit_id, i.customer_id FROM _clusters c JOIN _ids_frame i USING (anchor)"
    )
    con.unregister("_ids_frame")
    # The history in one statement: a previous id that moved to another is merged into it, or split from it when
    # it lives on; one that neither moved nor lives on is retired (fetched, then written by executemany, the 245
    # merges of the 1M bench's batch took about 30 ms, 0.12 ms a row).
    reasons = con.execute(
        """
        INSERT INTO customer_id_history
        WITH moves AS (
            SELECT DISTINCT p.customer_id AS old_id, a.customer_id AS new_id
            FROM _prev p JOIN _assignment a USING (unit_id) WHERE p.customer_id <> a.customer_id
        ),
        retired AS (
            SELECT DISTINCT customer_id AS old_id, NULL::VARCHAR AS new_id FROM _prev
            WHERE customer_id NOT IN (SELECT customer_id FROM _assignment)
              AND unit_id NOT IN (SELECT unit_id FROM _assignment)
              AND customer_id NOT IN (SELECT old_id FROM moves)
        )
        SELECT old_id, new_id, reason, $run_id, $now FROM (
            SELECT old_id, new_id,
                   CASE WHEN old_id IN (SELECT customer_id FROM _assignment) THEN 'split' ELSE 'merged' END AS reason,
                   0 AS part
            FROM moves
            UNION ALL SELECT old_id, new_id, 'retired', 1 FROM retired
        ) ORDER BY part, old_id, new_id
        RETURNING reason
        """,
        {"run_id": run_id, "now": now},
    ).fetchall()
    counts = Counter(reason for (reason,) in reasons)
    return {
        "customers": len(ids),
        "new_customers": new,
        "kept_customers": len(kept),
        "merged": counts["merged"],
        "split": counts["split"],
        "retired": counts["retired"],
        "last_sequence": seq,
    }


def _customer_sizes_sql(assignment: str | None = None) -> str:
    """Per customer: units, CRM contacts and online accounts. Of every customer in ``customer_source_records``,
    or of those in the temp table ``assignment`` (``unit_id``, ``customer_id``), which holds all their units."""
    units = (
        f"SELECT DISTINCT a.customer_id, a.unit_id, u.source FROM {assignment} a JOIN identity_units u USING (unit_id)"
        if assignment
        else "SELECT DISTINCT customer_id, unit_id, source FROM customer_source_records"
    )
    return f"""
        WITH cu AS ({units}),
        per AS (
            SELECT customer_id, count(*) AS units, count(*) FILTER (WHERE source = 'crm') AS crm_contacts
            FROM cu GROUP BY 1
        ),
        accounts AS (
            SELECT c.customer_id, count(DISTINCT k.id_value) AS accounts
            FROM cu c JOIN identity_unit_keys k USING (unit_id) WHERE k.id_type = 'user_id' GROUP BY 1
        )
        SELECT customer_id, units, crm_contacts, coalesce(accounts, 0) AS accounts
        FROM per LEFT JOIN accounts USING (customer_id)
        """


def _store_customer_sizes(con: duckdb.DuckDBPyConnection, region: tuple[str, str] | None = None) -> None:
    """``identity_customer_sizes``: every customer's size, rebuilt by a full run. An incremental one passes the
    ``region`` it re-resolved, two temp tables ``(gone, assignment)``, and rewrites only those rows: the ids in
    ``gone`` lose theirs, and those of ``assignment`` (``unit_id``, ``customer_id`` of all their units) get
    theirs anew."""
    if region is None:
        create_table_as(con, "identity_customer_sizes", _customer_sizes_sql(), uncompressed=("customer_id",))
        return
    gone, assignment = region
    con.execute(
        f"""DELETE FROM identity_customer_sizes
            WHERE customer_id IN (SELECT customer_id FROM {gone} UNION SELECT customer_id FROM {assignment})"""
    )
    con.execute(f"INSERT INTO identity_customer_sizes {_customer_sizes_sql(assignment)}")


def _outliers(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Cluster-size figures over every customer, from ``identity_customer_sizes``."""
    row = con.execute(
        f"""
        SELECT count(*), max(units), count(*) FILTER (WHERE units > 1),
               count(*) FILTER (WHERE units > {OUTLIER_UNITS} OR crm_contacts > {OUTLIER_CRM_CONTACTS}
                                   OR accounts > {OUTLIER_ACCOUNTS})
        FROM identity_customer_sizes
        """
    ).fetchall()[0]
    return {"customers": int(row[0]), "largest_customer_units": int(row[1] or 0),
            "multi_unit_customers": int(row[2] or 0), "outlier_customers": int(row[3] or 0)}  # fmt: skip


class _NotLocal(Exception):
    """An incremental run found an edge leaving the region it re-resolves: a full run is needed."""


def _model_sha(model_path: Path) -> str:
    """Fingerprint of what decides links: the trained model, the nickname table (which first names agree)
    and the code of the graph, the model's guards and the clustering (this module).

    A run whose fingerprint differs from the last run's rebuilds everything, so that a changed rule reaches
    the customers an incremental run would not touch (their stored units keep the name candidates, keys and
    pairs the old rules gave them).
    """
    return code_digest(model_path, str(graph.__file__), str(model.__file__), __file__, graph.NICKNAMES_FILE)


def last_run_stats(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The stats of the latest identity run (``identity_runs.stats``); empty before the first one."""
    if not table_exists(con, "identity_runs"):
        return {}
    rows = con.execute("SELECT stats FROM identity_runs ORDER BY finished_at DESC LIMIT 1").fetchall()
    return json.loads(rows[0][0]) if rows and rows[0][0] else {}


def _full_reason(
    con: duckdb.DuckDBPyConnection, settings: Settings, previous: dict[str, Any], fingerprint: str
) -> str | None:
    """Why this run must rebuild everything (None: it may resolve only what changed). ``previous``: the last
    run's stats; ``fingerprint``: :func:`_model_sha` of this run's model."""
    for table in STATE_TABLES:  # the identity schema itself exists: ensure_identity_schema ran
        if not table_exists(con, table):
            return f"no {table} yet"
    if not previous:
        return "first run"
    if changes.invalidated(con):
        return "records changed outside a run (erasure)"
    if con.execute("SELECT count(*) FROM stg_unit_changes WHERE unit_id = ?", [ALL_UNITS]).fetchall()[0][0]:
        return "staging was rebuilt"
    pending = _count(con, "SELECT count(*) FROM stg_unit_changes")
    if not pending and _count(con, "SELECT count(*) FROM stg_records") != _count(
        con, "SELECT count(*) FROM customer_source_records"
    ):
        return "staged records changed outside staging"
    if settings.engine != "duckdb":
        return f"engine {settings.engine}"
    if previous.get("model_sha") != fingerprint:
        return "the model or the linking rules changed"
    if previous.get("match_threshold") != settings.match_threshold:
        return "the match threshold changed"
    if previous.get("limits") != dict(settings.max_records_per_identifier):
        return "the identifier limits changed"
    if previous.get("block_limit") != settings.max_units_per_block:
        return "the block limit changed"
    if previous.get("model_prior") is None:
        return "no measured prior"
    return None


def resolve_identities(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    model_path: Path = model.MODEL_PATH,
    spark: Any = None,
    full: bool | None = None,
    prior: float | None = None,
) -> dict[str, Any]:
    """Resolve ``stg_records`` into customers (see module docstring). Returns counts only.

    ``model_path`` is the trained Splink model (the versioned one in the repo unless a bench says else).
    With ``settings.engine == "spark"`` Splink scores on Spark: on ``spark`` when given, else on a session
    at ``settings.spark_master`` (see :mod:`identity.spark`).

    ``full``: True rebuilds every customer; False or None re-resolves only the units staging changed
    (``stg_unit_changes``) when the stored state allows it (same model, threshold and limits, no erasure
    since), else rebuilds. ``stats["mode"]`` says which ran and ``stats["full_reason"]`` why. A full run
    measures the model's prior on its data unless ``prior`` is given (to compare a rebuild with an
    incremental run, which keeps the prior of the run before).
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).replace(tzinfo=None)
    run_id = started_at.strftime("idr_%Y%m%dT%H%M%S_") + uuid.uuid4().hex[:8]
    ensure_identity_schema(con)
    changes.ensure_changes_schema(con)
    previous = last_run_stats(con)
    fingerprint = _model_sha(model_path)
    reason = "requested" if full else _full_reason(con, settings, previous, fingerprint)
    if reason is None:
        try:
            return _resolve_changed(
                con, settings, model_path, fingerprint, float(previous["model_prior"]), run_id, started_at, started
            )
        except _NotLocal as exc:
            reason = str(exc)
    if settings.engine == "spark" and spark is None:
        from identity.spark import spark_session

        spark = spark_session(settings.spark_master, staging=settings.spark_staging)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    model.prepare_in_background()  # Splink's import overlaps the graph's statements
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
            prior=prior,
            block_limit=settings.max_units_per_block,
        )
    )

    t = time.perf_counter()
    stats.update(_components(con))
    timings["cluster_seconds"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    with transaction(con):
        ids = _assign_ids(con, run_id, started_at)
        for table in ("customer_source_records", "identity_edges"):
            con.execute(f"DROP TABLE {table}")
        ensure_identity_schema(con)
        con.execute(
            """
            INSERT INTO customer_source_records
            SELECT s.source, s.source_record_id, a.customer_id, s.unit_id
            FROM stg_records s JOIN _assignment a USING (unit_id)
            """
        )
        _insert_edges(con, run_id)
        _store_state(con)
        _store_customer_sizes(con)
        changes.record_changes(con, run_id, None)
        stats.update(ids)
        _finish(con, settings, fingerprint, run_id, started_at, started, stats, timings, "full", reason)
    stats["run_id"] = run_id
    return stats


def _insert_edges(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
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


def _store_state(con: duckdb.DuckDBPyConnection) -> None:
    """Keep what an incremental run builds on: every unit's attributes, first-pass component and ambiguity,
    every unit's keys, and every model pair the precision guard let through."""
    create_table_as(
        con,
        "identity_units",
        """SELECT u.*, p.component, u.unit_id IN (SELECT unit_id FROM _ambiguous_units) AS ambiguous
           FROM _units u JOIN _pass1 p USING (unit_id)""",
        uncompressed=("unit_id",),
    )
    create_table_as(con, "identity_unit_keys", "SELECT * FROM _unit_keys", uncompressed=("unit_id", "id_value"))
    create_table_as(con, "identity_model_pairs", "SELECT * FROM _model_pairs", uncompressed=("unit_id_l", "unit_id_r"))


def _finish(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    fingerprint: str,
    run_id: str,
    started_at: datetime,
    started: float,
    stats: dict[str, Any],
    timings: dict[str, float],
    mode: str,
    reason: str | None,
) -> None:
    """Counts, outliers and the ``identity_runs`` row; the changed units are consumed."""
    t = time.perf_counter()
    con.execute("DELETE FROM stg_unit_changes")
    changes.clear_invalidation(con)
    stats.update(_outliers(con))
    # identity_units holds one row per unit of stg_records (rebuilt by a full run, kept so by an incremental one)
    counts = con.execute("SELECT (SELECT count(*) FROM stg_records), (SELECT count(*) FROM identity_units)").fetchall()
    stats["records"], stats["units"] = int(counts[0][0]), int(counts[0][1])
    stats["identity_edges"] = int(con.execute("SELECT count(*) FROM identity_edges").fetchall()[0][0])
    if mode == "incremental":  # every customer outside the region kept its id too
        stats["kept_customers"] = stats["customers"] - stats["new_customers"]
    stats.update(
        mode=mode,
        full_reason=reason,
        model_sha=fingerprint,
        match_threshold=settings.match_threshold,
        limits=dict(settings.max_records_per_identifier),
        block_limit=settings.max_units_per_block,
    )
    timings["write_seconds"] = round(timings.get("write_seconds", 0.0) + time.perf_counter() - t, 2)
    stats.update(timings)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    con.execute(
        "INSERT INTO identity_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id, started_at, datetime.now(UTC).replace(tzinfo=None), model.MODEL_NAME,
            settings.match_threshold, stats["records"], stats["units"], stats["customers"],
            stats["new_customers"], stats["merged"], stats["split"], stats["retired"], stats["last_sequence"],
            json.dumps(stats),
        ],
    )  # fmt: skip


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])


def _resolve_changed(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    model_path: Path,
    fingerprint: str,
    prior: float,
    run_id: str,
    started_at: datetime,
    started: float,
) -> dict[str, Any]:
    """Re-resolve only what the units in ``stg_unit_changes`` can have changed; the rest stays as it is.

    1. The changed units' attributes and keys are rebuilt from their records; so are the accounts and
       cards "in use" of every unit sharing an account or card with them. Units whose attributes or keys
       really changed (new, gone, or different) are *W*.
    2. Splink scores the pairs of W with every person unit and among itself (one ``predict_within`` over W
       and the units in its blocks) with the previous run's prior; W's stored pairs are replaced. The ambiguity
       guard is re-read for every unit with a pair to W; a unit whose verdict flips brings its partners.
    3. The region: every first-pass component (see :func:`_components`) holding a unit of W, a holder of
       a key W holds or held, or a unit of step 2. No edge can leave it (checked: an edge that does makes
       the run full), so clustering it alone gives what a full run gives; the stable-id vote runs over the
       region's previous customers only and every other customer keeps its id and records.
    """
    limits = settings.max_records_per_identifier
    graph.install_macros(con)
    stats: dict[str, Any] = {"model_prior": prior}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with transaction(con):
        con.execute("CREATE OR REPLACE TEMP TABLE _c0 AS SELECT DISTINCT unit_id FROM stg_unit_changes")
        stats["changed_units"] = _count(con, "SELECT count(*) FROM _c0")
        if not stats["changed_units"]:  # staging changed no unit: every customer stays as it is
            stats.update(
                identity_changed_units=0, region_units=0, changed_customers=0, new_customers=0, merged=0, split=0,
                retired=0, last_sequence=_last_sequence(con, incremental=True),
            )  # fmt: skip
            _finish(con, settings, fingerprint, run_id, started_at, started, stats, timings, "incremental", None)
            stats["run_id"] = run_id
            return stats
        model.prepare_in_background()  # Splink's import overlaps the graph statements below
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _c0_records AS "
            f"SELECT {', '.join(graph.RECORD_COLUMNS)} FROM stg_records WHERE unit_id IN (SELECT unit_id FROM _c0)"
        )
        graph.build_units(con, "_c0_records", with_keys=False)
        graph.build_unit_keys(con, "_c0_records")
        con.execute("CREATE OR REPLACE TEMP TABLE _c0_keys AS SELECT * FROM _unit_keys")
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _old_keys AS "
            "SELECT * FROM identity_unit_keys WHERE unit_id IN (SELECT unit_id FROM _c0)"
        )
        # Only the keys that changed are written: most of a changed unit's keys are what they were, and
        # rewriting them all made the checkpoint compress the table's last row group again (~0.25 s at 1M).
        # The two differences also tell which units' keys changed (W, below).
        con.execute("CREATE OR REPLACE TEMP TABLE _keys_gone AS SELECT * FROM _old_keys EXCEPT SELECT * FROM _c0_keys")
        con.execute("CREATE OR REPLACE TEMP TABLE _keys_new AS SELECT * FROM _c0_keys EXCEPT SELECT * FROM _old_keys")
        con.execute(
            """
            DELETE FROM identity_unit_keys
            WHERE (unit_id, id_type, id_value, shared_unit) IN (
                SELECT (unit_id, id_type, id_value, shared_unit) FROM _keys_gone)
            """
        )
        con.execute("INSERT INTO identity_unit_keys SELECT * FROM _keys_new")
        # Units sharing an account or card with a changed unit: whether theirs is "in use" may change.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _w1 AS
            SELECT DISTINCT unit_id FROM identity_unit_keys
            WHERE (id_type, id_value) IN (SELECT (id_type, id_value) FROM _old_keys UNION
                                          SELECT (id_type, id_value) FROM _c0_keys)
              AND id_type IN ('user_id', 'loyalty_id') AND unit_id NOT IN (SELECT unit_id FROM _c0)
            """
        )
        # The stored rows of the changed units and of _w1, read once: _w1's go into _units as they are, and
        # all of them are what W is found against below.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _old_units AS
            SELECT * FROM identity_units
            WHERE unit_id IN (SELECT unit_id FROM _c0 UNION SELECT unit_id FROM _w1)
            """
        )
        con.execute(
            "INSERT INTO _units BY NAME SELECT * EXCLUDE (component, ambiguous) FROM _old_units "
            "WHERE unit_id IN (SELECT unit_id FROM _w1)"
        )
        # Every key of those units as stored now (_unit_keys is read again below: the keys of W).
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _unit_keys AS "
            "SELECT * FROM identity_unit_keys WHERE unit_id IN (SELECT unit_id FROM _units)"
        )
        graph.apply_used_keys(con, all_keys="identity_unit_keys")
        # W: units whose identity (attributes or keys) changed, appeared or disappeared.
        same = ", ".join(c for c in _unit_columns(con) if c != "n_records")
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _w AS
            SELECT unit_id FROM (SELECT {same} FROM _units EXCEPT SELECT {same} FROM _old_units)
            UNION SELECT unit_id FROM _old_units WHERE unit_id NOT IN (SELECT unit_id FROM _units)
            UNION SELECT unit_id FROM _keys_gone
            UNION SELECT unit_id FROM _keys_new
            """
        )
        stats["identity_changed_units"] = _count(con, "SELECT count(*) FROM _w")
        con.execute("DELETE FROM identity_units WHERE unit_id IN (SELECT unit_id FROM _old_units)")
        con.execute(
            """
            INSERT INTO identity_units BY NAME
            SELECT u.*, o.component, coalesce(o.ambiguous, false) AS ambiguous
            FROM _units u LEFT JOIN _old_units o USING (unit_id)
            """
        )
        timings["graph_seconds"] = round(time.perf_counter() - t, 2)

        # 2. Model pairs of W, and the ambiguity guard around them.
        # A view: Splink reads the changed units and their candidates, not all 300k person units.
        con.execute(f"CREATE OR REPLACE TEMP VIEW _person_units_now AS {model.person_units_sql('identity_units')}")
        con.execute(f"CREATE OR REPLACE TEMP VIEW _person_units_before AS {model.person_units_sql('_old_units')}")
        # The changed units as identity_units now holds them, read in _units (a few thousand rows, not 340k).
        con.execute(f"CREATE OR REPLACE TEMP VIEW _person_units_changed AS {model.person_units_sql('_units')}")
        try:
            stats.update(
                model.predict_changed_pairs(
                    con, "_w", model.probability_to_weight(settings.match_threshold), prior, model_path,
                    threads=settings.threads, memory_limit=settings.memory_limit, person_units="_person_units_now",
                    before="_person_units_before", now="_person_units_changed",
                    block_limit=settings.max_units_per_block,
                )
            )  # fmt: skip
        except model.CrowdsChanged as exc:
            raise _NotLocal(str(exc)) from None
        t = time.perf_counter()
        touching = "unit_id_l IN (SELECT unit_id FROM _w) OR unit_id_r IN (SELECT unit_id FROM _w)"
        con.execute(f"CREATE OR REPLACE TEMP TABLE _old_pairs AS SELECT * FROM identity_model_pairs WHERE {touching}")
        con.execute(f"DELETE FROM identity_model_pairs WHERE {touching}")
        con.execute("INSERT INTO identity_model_pairs SELECT * FROM _new_model_pairs")
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _p AS
            SELECT unit_id FROM _w
            UNION SELECT unit_id_l FROM _old_pairs UNION SELECT unit_id_r FROM _old_pairs
            UNION SELECT unit_id_l FROM _new_model_pairs UNION SELECT unit_id_r FROM _new_model_pairs
            """
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _ambiguous_units AS "
            + model.ambiguous_units_sql("identity_model_pairs", "identity_units", among="_p")
        )
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _flipped AS
            SELECT unit_id FROM identity_units
            WHERE unit_id IN (SELECT unit_id FROM _p)
              AND ambiguous <> (unit_id IN (SELECT unit_id FROM _ambiguous_units))
            """
        )
        con.execute(
            "UPDATE identity_units SET ambiguous = (unit_id IN (SELECT unit_id FROM _ambiguous_units)) "
            "WHERE unit_id IN (SELECT unit_id FROM _p)"
        )

        # 3. The region: whole first-pass components around everything that changed. W's keys now are in
        # _unit_keys (every unit of W but a gone one, which holds none now, is a changed unit or one of _w1).
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _r0 AS
            SELECT unit_id FROM _p
            UNION SELECT unit_id FROM identity_unit_keys
                  WHERE (id_type, id_value) IN (
                      SELECT (id_type, id_value) FROM _old_keys WHERE unit_id IN (SELECT unit_id FROM _w)
                      UNION SELECT (id_type, id_value) FROM _unit_keys WHERE unit_id IN (SELECT unit_id FROM _w))
            UNION SELECT unit_id_r FROM identity_model_pairs WHERE unit_id_l IN (SELECT unit_id FROM _flipped)
            UNION SELECT unit_id_l FROM identity_model_pairs WHERE unit_id_r IN (SELECT unit_id FROM _flipped)
            """
        )
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _scope AS
            WITH comps AS (
                SELECT component FROM identity_units WHERE unit_id IN (SELECT unit_id FROM _r0)
                UNION SELECT component FROM _old_units WHERE unit_id IN (SELECT unit_id FROM _r0)
            )
            SELECT unit_id FROM identity_units WHERE component IN (SELECT component FROM comps)
            UNION SELECT unit_id FROM _r0
            UNION SELECT unit_id FROM _old_units WHERE component IN (SELECT component FROM comps)
            """
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _region AS "
            "SELECT unit_id FROM _scope WHERE unit_id IN (SELECT unit_id FROM identity_units)"
        )
        stats["region_units"] = _count(con, "SELECT count(*) FROM _region")

        # Graph edges of the region: every key a region unit holds, judged over all its holders.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _unit_keys AS
            SELECT * FROM identity_unit_keys WHERE (id_type, id_value) IN (
                SELECT (id_type, id_value) FROM identity_unit_keys WHERE unit_id IN (SELECT unit_id FROM _region))
            """
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _units AS SELECT * EXCLUDE (component, ambiguous) FROM identity_units "
            "WHERE unit_id IN (SELECT unit_id FROM _unit_keys UNION SELECT unit_id FROM _region)"
        )
        graph.link_keys(con, limits, all_keys="identity_unit_keys")
        inside = "unit_id_{} IN (SELECT unit_id FROM _region)"
        leaving = _count(
            con,
            f"SELECT count(*) FROM _graph_edges WHERE ({inside.format('l')}) <> ({inside.format('r')})",
        )
        con.execute(f"DELETE FROM _graph_edges WHERE NOT ({inside.format('l')}) OR NOT ({inside.format('r')})")
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _model_pairs AS
            SELECT * FROM identity_model_pairs WHERE {inside.format("l")} OR {inside.format("r")}
            """
        )
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _model_edges AS SELECT * FROM _model_pairs
            WHERE unit_id_l NOT IN (SELECT unit_id FROM identity_units WHERE ambiguous)
              AND unit_id_r NOT IN (SELECT unit_id FROM identity_units WHERE ambiguous)
            """
        )
        leaving += _count(
            con,
            f"SELECT count(*) FROM _model_edges WHERE ({inside.format('l')}) <> ({inside.format('r')})",
        )
        if leaving:
            raise _NotLocal(f"{leaving} edges leave the changed region")
        stats.update(graph.graph_stats(con))
        # The region's units: they are in _units already (every unit holding one of the region's keys, and the
        # region), and identity_units has not changed since.
        con.execute("CREATE OR REPLACE TEMP TABLE _units AS FROM _units WHERE unit_id IN (SELECT unit_id FROM _region)")
        if stats["region_units"]:
            stats.update(_components(con))
        else:  # nothing to re-resolve (no new data, or records that changed nothing about who is who)
            con.execute("CREATE OR REPLACE TEMP TABLE _clusters (unit_id VARCHAR, anchor VARCHAR, component BIGINT)")
            con.execute("CREATE OR REPLACE TEMP TABLE _pass1 (unit_id VARCHAR, component BIGINT)")
            con.execute("CREATE OR REPLACE TEMP TABLE _kept_model_edges AS SELECT * FROM _model_edges")
        offset = _count(con, "SELECT coalesce(max(component), -1) + 1 FROM identity_units")
        con.execute(
            "UPDATE identity_units SET component = p.component + ? FROM _pass1 p "
            "WHERE identity_units.unit_id = p.unit_id",
            [offset],
        )
        timings["cluster_seconds"] = round(time.perf_counter() - t, 2)

        t = time.perf_counter()
        # The customers the touched units (the region, and the changed units outside it) had: read once.
        touched = "unit_id IN (SELECT unit_id FROM _scope UNION SELECT unit_id FROM _c0)"
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _touched_links AS "
            f"SELECT DISTINCT unit_id, customer_id FROM customer_source_records WHERE {touched}"
        )
        ids = _assign_ids(con, run_id, started_at, scope="_scope", links="_touched_links")
        # Changed units outside the region kept their identity: their new records join their customer.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _assignment_all AS
            SELECT unit_id, customer_id FROM _assignment
            UNION ALL
            SELECT unit_id, min(customer_id) FROM _touched_links
            WHERE unit_id IN (SELECT unit_id FROM _c0) AND unit_id NOT IN (SELECT unit_id FROM _scope)
            GROUP BY unit_id
            """
        )
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _changed_ids AS
            SELECT customer_id FROM _touched_links UNION SELECT customer_id FROM _assignment_all
            """
        )
        con.execute(f"DELETE FROM customer_source_records WHERE {touched}")
        con.execute(
            """
            INSERT INTO customer_source_records
            SELECT s.source, s.source_record_id, a.customer_id, s.unit_id
            FROM stg_records s JOIN _assignment_all a USING (unit_id)
            """
        )
        con.execute(
            "DELETE FROM identity_edges WHERE unit_id_l IN (SELECT unit_id FROM _scope) "
            "OR unit_id_r IN (SELECT unit_id FROM _scope)"
        )
        _insert_edges(con, run_id)
        # Sizes change only in the region: a changed unit outside it kept its attributes and keys (else it would be
        # in W, whose components the region holds whole), and its customer its units. The region's customers are
        # whole there, so their units are read from the assignment, not from all the record links.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _region_customers_before AS "
            "SELECT customer_id FROM _touched_links WHERE unit_id IN (SELECT unit_id FROM _scope)"
        )
        _store_customer_sizes(con, ("_region_customers_before", "_assignment"))
        stats["changed_customers"] = changes.record_changes(con, run_id, "SELECT customer_id FROM _changed_ids")
        stats.update(ids)
        timings["write_seconds"] = round(time.perf_counter() - t, 2)
        _finish(con, settings, fingerprint, run_id, started_at, started, stats, timings, "incremental", None)
    stats["run_id"] = run_id
    return stats


def _unit_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in con.execute("SELECT column_name FROM (DESCRIBE _units)").fetchall()]

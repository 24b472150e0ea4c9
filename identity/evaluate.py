"""How good is the resolution: pairwise precision, recall and F1 over identity units against labels.

The grain is the identity unit (a CRM contact, a store transaction, a web cookie, an app device). A
unit's true person is the one most of its records belong to (a shared tablet belongs to whoever used it
most); its predicted customer is the one most of its records got. A pair of units is a true match when
both belong to one person and a predicted match when both got one customer.

Recall is also reported over the pairs that some evidence in the data connects (``recall_connectable``):
a cookie that never logged in and shares nothing with anyone cannot be linked by any method, and neither
can two groups of one person's units that share nothing with each other (units A and B share an email,
C and D a loyalty card, nothing joins the two). The truth's ``evidence_group`` labels each unit with its
group (the generator's connected component of that person's units under the keys in the data); a pair
is connectable when both units are in one group. The older, looser figure -- every pair of two
connectable units of one person, whether or not any evidence joins them -- is ``recall_connectable_units``.
A truth file without ``evidence_group`` puts all of a person's connectable units in one group (both
figures are then the same).

>>> import duckdb
>>> con = duckdb.connect()
>>> _ = con.execute("CREATE TABLE u AS SELECT * FROM (VALUES ('a','c1','p1',true,'p1/1'), ('b','c1','p1',true,"
...                 "'p1/1'), ('c','c2','p1',true,'p1/2'), ('d','c3','p1',true,'p1/2')) "
...                 "t(unit_id, customer_id, person_id, connectable, evidence_group)")
>>> m = evaluate_units(con, "u")
>>> m["precision"], round(m["recall"], 3), m["recall_connectable"]
(1.0, 0.167, 0.5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from cdp.errors import CdpError

TRUTH_COLUMNS = ("source", "source_record_id", "unit_id", "person_id", "connectable", "evidence_group")


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else 1.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def evaluate_units(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, Any]:
    """Metrics over ``table(unit_id, customer_id, person_id, connectable[, evidence_group])``, one row per unit.

    ``table`` is the name of a table this module created (not user text). Without an ``evidence_group``
    column a person's connectable units form one group (the looser measure).
    """
    columns = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
    group = "evidence_group" if "evidence_group" in columns else "CASE WHEN connectable THEN person_id END"
    pair = "sum(n * (n - 1) / 2)::HUGEINT"

    def pairs(by: str, where: str = "") -> int:
        row = con.execute(
            f"SELECT coalesce({pair}, 0) FROM (SELECT count(*) AS n FROM {table} {where} GROUP BY {by})"
        ).fetchall()[0]
        return int(row[0])

    tp, predicted, true = pairs("customer_id, person_id"), pairs("customer_id"), pairs("person_id")
    tp_u, true_u = pairs("customer_id, person_id", "WHERE connectable"), pairs("person_id", "WHERE connectable")
    in_group = f"WHERE {group} IS NOT NULL"
    tp_g, true_g = pairs(f"customer_id, {group}", in_group), pairs(group, in_group)
    counts = con.execute(
        f"""
        SELECT count(*), count(*) FILTER (WHERE connectable),
          (SELECT count(DISTINCT customer_id) FROM {table}),
          (SELECT count(DISTINCT person_id) FROM {table}),
          (SELECT count(*) FROM (SELECT customer_id FROM {table} GROUP BY 1
                                 HAVING count(DISTINCT person_id) > 1)),
          (SELECT count(*) FROM (SELECT person_id FROM {table} GROUP BY 1
                                 HAVING count(DISTINCT customer_id) > 1)),
          (SELECT count(*) FROM (SELECT person_id FROM {table} WHERE connectable GROUP BY 1
                                 HAVING count(DISTINCT customer_id) > 1)),
          (SELECT count(*) FROM (SELECT {group} AS g FROM {table} {in_group} GROUP BY 1 HAVING count(*) > 1)),
          (SELECT count(*) FROM (SELECT {group} AS g FROM {table} {in_group} GROUP BY 1
                                 HAVING count(DISTINCT customer_id) > 1))
        FROM {table}
        """
    ).fetchall()[0]
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, true)
    recall_g = _ratio(tp_g, true_g)
    recall_u = _ratio(tp_u, true_u)
    return {
        "units": int(counts[0]),
        "connectable_units": int(counts[1]),
        "customers": int(counts[2]),
        "persons": int(counts[3]),
        "true_pairs": true,
        "predicted_pairs": predicted,
        "true_positive_pairs": tp,
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        # the measure: pairs of one person's units that one evidence group joins
        "connectable_pairs": true_g,
        "connectable_pairs_linked": tp_g,
        "recall_connectable": recall_g,
        "f1_connectable": _f1(precision, recall_g),
        # the looser one: every pair of two connectable units of one person
        "connectable_unit_pairs": true_u,
        "recall_connectable_units": recall_u,
        "over_merged_customers": int(counts[4]),
        "split_persons": int(counts[5]),
        "split_connectable_persons": int(counts[6]),
        "evidence_groups": int(counts[7]),
        "split_evidence_groups": int(counts[8]),
    }


def load_truth(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Read a truth CSV (``source, source_record_id, unit_id, person_id`` and optionally ``connectable`` and
    ``evidence_group``) into ``_truth``. Without ``connectable`` every record is connectable; without
    ``evidence_group`` a person's connectable records form one group. Returns the number of records; a file
    without any is refused (it would score a perfect 1.0 on nothing)."""
    if path.is_dir():
        inside = path / "records.csv"
        hint = f" (did you mean {inside}?)" if inside.is_file() else ""
        raise CdpError(f"{path}: is a directory, not a truth file{hint}")
    if not path.is_file():
        raise CdpError(f"{path}: truth file not found")
    if path.stat().st_size == 0:
        raise CdpError(f"{path}: empty file, no records")
    try:
        rel = con.read_csv(str(path), header=True, all_varchar=True)
    except duckdb.Error as exc:
        raise CdpError(f"{path}: cannot read truth file ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("source", "source_record_id", "person_id") if c not in rel.columns]
    if missing:
        raise CdpError(f"{path}: truth file lacks column {missing[0]}")
    connectable = "coalesce(TRY_CAST(connectable AS BOOLEAN), true)" if "connectable" in rel.columns else "true"
    group = "evidence_group" if "evidence_group" in rel.columns else f"CASE WHEN {connectable} THEN person_id END"
    con.register("_truth_rel", rel)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _truth AS
        SELECT source, source_record_id, person_id, {connectable} AS connectable,
               CASE WHEN {connectable} THEN {group} END AS evidence_group
        FROM _truth_rel
        """
    )
    con.unregister("_truth_rel")
    n_truth = int(con.execute("SELECT count(*) FROM _truth").fetchall()[0][0])
    if not n_truth:
        raise CdpError(f"{path}: no records")
    return n_truth


def evaluate(con: duckdb.DuckDBPyConnection, truth_path: Path) -> dict[str, Any]:
    """Compare ``customer_source_records`` with a truth file; see :func:`evaluate_units`.

    Truth records missing from the store are counted (``truth_records_unmatched``); a truth file none of
    whose records is in the store (the truth of another inbox) is refused rather than scored 1.0 on nothing.
    """
    from cdp.store import table_exists

    if not table_exists(con, "customer_source_records"):
        raise CdpError("no customer_source_records yet; run `cdp run --inbox DIR` first")
    n_truth = load_truth(con, truth_path)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _eval_records AS
        SELECT c.unit_id, c.customer_id, t.person_id, t.connectable, t.evidence_group
        FROM customer_source_records c JOIN _truth t USING (source, source_record_id)
        """
    )
    matched = int(con.execute("SELECT count(*) FROM _eval_records").fetchall()[0][0])
    if not matched:
        raise CdpError(
            f"{truth_path}: none of its {n_truth:,} records is in the store; is it the truth of another inbox?"
        )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _eval_units AS
        WITH persons AS (
            SELECT unit_id, person_id, count(*) AS n, bool_or(connectable) AS connectable,
                   min(evidence_group) AS evidence_group
            FROM _eval_records GROUP BY unit_id, person_id
        ),
        customers AS (SELECT unit_id, customer_id, count(*) AS n FROM _eval_records GROUP BY ALL)
        SELECT p.unit_id, c.customer_id, p.person_id, p.connectable, p.evidence_group
        FROM (SELECT unit_id, arg_max(person_id, (n, person_id)) AS person_id,
                     arg_max(connectable, (n, person_id)) AS connectable,
                     arg_max_null(evidence_group, (n, person_id)) AS evidence_group FROM persons GROUP BY 1) p
        JOIN (SELECT unit_id, arg_max(customer_id, (n, customer_id)) AS customer_id
              FROM customers GROUP BY 1) c
          USING (unit_id)
        """
    )
    metrics = evaluate_units(con, "_eval_units")
    metrics["truth_records"] = n_truth
    metrics["truth_records_unmatched"] = n_truth - matched
    return metrics

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

import csv
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


#: What DuckDB's CSV rejects mean, in the words of the person who has to fix the line.
_CSV_FAULTS = {
    "UNQUOTED VALUE": "a quote left open or a stray quote",
    "MISSING COLUMNS": "fewer fields than the header",
    "TOO MANY COLUMNS": "more fields than the header",
    "INVALID ENCODING": "not UTF-8 text",
    "LINE SIZE OVER MAXIMUM": "a line too long, a quote left open?",
}


def _truth_header(path: Path) -> list[str]:
    """The truth file's column names, trimmed and lower-cased: a header written ``SOURCE,Person_ID`` names the
    same columns as ``source,person_id`` (as an inbox file's header does)."""
    try:
        with path.open("rb") as fh:
            first = fh.readline().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CdpError(f"{path}: line 1 is not UTF-8 text") from None
    names = [name.strip().lower() or f"column{i}" for i, name in enumerate(next(csv.reader([first]), []))]
    twice = [name for i, name in enumerate(names) if name in names[:i]]
    if twice:
        raise CdpError(f"{path}: column {twice[0]} appears twice in the header")
    return names


def _read_truth(con: duckdb.DuckDBPyConnection, path: Path, header: list[str]) -> None:
    """Temp table ``_truth_read`` (``_row`` and the truth columns of the header, trimmed, NULL when empty).

    Read strictly with the header's columns and nothing sniffed: a line DuckDB cannot parse is refused by its
    line number, where the sniffer gave up on the whole file (and a lenient read scored the lines it kept).
    """
    con.execute("DROP TABLE IF EXISTS _truth_csv_errors; DROP TABLE IF EXISTS _truth_csv_scans")
    try:
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _truth_raw AS SELECT row_number() OVER () AS _row, *
               FROM read_csv(?, header = true, auto_detect = false, columns = ?, delim = ',', quote = '"',
                             escape = '"', encoding = 'utf-8', store_rejects = true,
                             rejects_table = '_truth_csv_errors', rejects_scan = '_truth_csv_scans')""",
            [str(path), dict.fromkeys(header, "VARCHAR")],
        )
        bad = con.execute("SELECT line, error_type, csv_line FROM _truth_csv_errors ORDER BY line LIMIT 1").fetchall()
    except duckdb.Error as exc:
        raise CdpError(f"{path}: cannot read truth file ({str(exc).splitlines()[0]})") from None
    finally:
        con.execute("DROP TABLE IF EXISTS _truth_csv_errors; DROP TABLE IF EXISTS _truth_csv_scans")
    if bad:
        line, fault, text = bad[0]
        shown = str(text).splitlines()[0][:60] if text else ""
        raise CdpError(f"{path}: line {line} is not a CSV row ({_CSV_FAULTS.get(fault, str(fault).lower())}): {shown}")
    # the columns this module names (the header's other columns are never named in SQL)
    trimmed = ", ".join(f"NULLIF(trim({name}), '') AS {name}" for name in TRUTH_COLUMNS if name in header)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _truth_read AS SELECT _row, {trimmed} FROM _truth_raw")
    con.execute("DROP TABLE _truth_raw")


def load_truth(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Read a truth CSV (``source, source_record_id, unit_id, person_id`` and optionally ``connectable`` and
    ``evidence_group``) into ``_truth``. Without ``connectable`` every record is connectable (an empty cell
    too); without ``evidence_group`` a person's connectable records form one group. Returns the number of
    records.

    A file that would be scored on labels it does not hold is refused in one line naming its first fault: no
    records (a perfect 1.0 on nothing), a line that is not CSV, an empty source, source_record_id or person_id
    (blank labels would be one person), a ``connectable`` that is neither true nor false (``maybe`` was read as
    true), and a record labelled twice differently (two files of different persons put together). A record
    written twice alike counts once.
    """
    if path.is_dir():
        inside = path / "records.csv"
        hint = f" (did you mean {inside}?)" if inside.is_file() else ""
        raise CdpError(f"{path}: is a directory, not a truth file{hint}")
    if not path.is_file():
        raise CdpError(f"{path}: truth file not found")
    if path.stat().st_size == 0:
        raise CdpError(f"{path}: empty file, no records")
    header = _truth_header(path)
    missing = [c for c in ("source", "source_record_id", "person_id") if c not in header]
    if missing:
        raise CdpError(f"{path}: truth file lacks column {missing[0]}")
    _read_truth(con, path, header)
    has_connectable, has_group = "connectable" in header, "evidence_group" in header
    connectable = "coalesce(TRY_CAST(connectable AS BOOLEAN), true)" if has_connectable else "true"
    unreadable = "connectable IS NOT NULL AND TRY_CAST(connectable AS BOOLEAN) IS NULL" if has_connectable else "false"
    fault = con.execute(
        f"""
        SELECT _row, source, source_record_id, CASE
            WHEN source IS NULL THEN 'empty source'
            WHEN source_record_id IS NULL THEN 'empty source_record_id'
            WHEN person_id IS NULL THEN 'empty person_id'
            WHEN {unreadable} THEN 'connectable ''' || connectable || ''' is neither true nor false'
          END AS fault
        FROM _truth_read WHERE fault IS NOT NULL ORDER BY _row LIMIT 1
        """
    ).fetchall()
    if fault:
        row, source, record_id, what = fault[0]
        key = f" ({source} {record_id})" if source and record_id else ""
        raise CdpError(f"{path}: row {row}{key}: {what}")
    group = "evidence_group" if has_group else f"CASE WHEN {connectable} THEN person_id END"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _truth_labels AS
        SELECT _row, source, source_record_id, person_id, {connectable} AS connectable,
               CASE WHEN {connectable} THEN {group} END AS evidence_group
        FROM _truth_read
        """
    )
    con.execute("DROP TABLE _truth_read")
    _refuse_conflicting_labels(con, path)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _truth AS
        SELECT DISTINCT source, source_record_id, person_id, connectable, evidence_group FROM _truth_labels
        """
    )
    con.execute("DROP TABLE _truth_labels")
    n_truth = int(con.execute("SELECT count(*) FROM _truth").fetchall()[0][0])
    if not n_truth:
        raise CdpError(f"{path}: no records")
    return n_truth


def _refuse_conflicting_labels(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a record (``source, source_record_id``) whose rows say two different things: which label would be
    scored depends on nothing but row order. Names the first such row and the row it contradicts."""
    labels = ("person_id", "connectable", "evidence_group")
    firsts = ", ".join(f"first_value({c}) OVER w AS first_{c}" for c in labels)
    differs = " OR ".join(f"{c} IS DISTINCT FROM first_{c}" for c in labels)
    found = con.execute(
        f"""
        SELECT * FROM (
            SELECT _row, source, source_record_id, {", ".join(labels)}, first_value(_row) OVER w AS first_row, {firsts}
            FROM _truth_labels WINDOW w AS (PARTITION BY source, source_record_id ORDER BY _row)
        ) WHERE {differs} ORDER BY _row LIMIT 1
        """
    ).fetchall()
    if not found:
        return
    row, source, record_id, *values = found[0]
    now, first_row, before = values[: len(labels)], values[len(labels)], values[len(labels) + 1 :]
    column = next(i for i, (a, b) in enumerate(zip(before, now, strict=True)) if a != b)
    raise CdpError(
        f"{path}: rows {first_row} and {row} label {source} {record_id} differently "
        f"({labels[column]} {before[column]} and {now[column]})"
    )


#: The share of a truth file's records that may be missing from the store before it is refused (unless
#: allowed): a few are records erased or quarantined since; most is the truth of another inbox, whose few
#: records that happen to share an id with this store's were scored as if they were labels of it.
MOST_UNMATCHED = 0.5


def evaluate(con: duckdb.DuckDBPyConnection, truth_path: Path, allow_unmatched: bool = False) -> dict[str, Any]:
    """Compare ``customer_source_records`` with a truth file; see :func:`evaluate_units`.

    Truth records missing from the store are counted (``truth_records_unmatched``). A truth file more than
    :data:`MOST_UNMATCHED` of whose records are not in the store is refused unless ``allow_unmatched``; one
    none of whose records is in the store is refused always (it would score 1.0 on nothing).
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
    if n_truth - matched > MOST_UNMATCHED * n_truth and not allow_unmatched:
        raise CdpError(
            f"{truth_path}: {n_truth - matched:,} of its {n_truth:,} records are not in the store; is it the truth "
            "of another inbox? (--allow-unmatched scores it anyway)"
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

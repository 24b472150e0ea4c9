"""The closing summary of a run: what was built, readable in five seconds. Counts only, no values."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from cdp.store import table_exists


@dataclass
class StoreSummary:
    files: int
    files_rejected: int
    rows_in: int
    rows_loaded: int
    rows_quarantined: int
    rows_suppressed: int
    unbalanced_files: int
    records: int
    customers: int | None
    profiles: int | None
    consent_rows: int | None
    granted_by_purpose: dict[str, int]
    identity_run: str | None = None  # how the last identity run ran: full (why) or incremental (how much)

    def lines(self) -> list[str]:
        out = [
            f"files ingested      {self.files} ({self.files_rejected} rejected)",
            f"rows in             {self.rows_in:,} = {self.rows_loaded:,} loaded + {self.rows_quarantined:,} "
            f"quarantined + {self.rows_suppressed:,} suppressed"
            + ("" if not self.unbalanced_files else f"  [{self.unbalanced_files} files do not add up!]"),
            f"source records      {self.records:,}",
        ]
        if self.customers is not None:
            out.append(f"unified customers   {self.customers:,}")
        if self.identity_run:
            out.append(f"identity run        {self.identity_run}")
        if self.profiles is not None:
            out.append(f"profiles            {self.profiles:,}")
        if self.granted_by_purpose:
            granted = ", ".join(f"{p} {n:,}" for p, n in sorted(self.granted_by_purpose.items()))
            out.append(f"consent granted     {granted}")
        return out


def _count(con: duckdb.DuckDBPyConnection, table: str, where: str = "") -> int | None:
    if not table_exists(con, table):
        return None
    return int(con.execute(f"SELECT count(*) FROM {table} {where}").fetchall()[0][0])


def _identity_run(con: duckdb.DuckDBPyConnection) -> str | None:
    from identity.resolve import last_run_stats

    stats = last_run_stats(con)
    if not stats:
        return None
    if stats.get("mode") == "incremental":
        return (
            f"incremental: {stats.get('changed_units', 0):,} changed units, {stats.get('region_units', 0):,} "
            f"re-resolved, {stats.get('changed_customers', 0):,} customers updated"
        )
    return f"full ({stats['full_reason']})" if stats.get("full_reason") else "full"


def summarise(con: duckdb.DuckDBPyConnection) -> StoreSummary:
    row = con.execute(
        "SELECT count(*), count(*) FILTER (status IN ('rejected', 'failed')), coalesce(sum(rows_in), 0), "
        "coalesce(sum(rows_loaded), 0), coalesce(sum(rows_quarantined), 0), coalesce(sum(rows_suppressed), 0), "
        "count(*) FILTER (rows_in <> rows_loaded + rows_quarantined + rows_suppressed) FROM ingest_batches"
    ).fetchall()[0]
    granted: dict[str, int] = {}
    if table_exists(con, "consent_state"):
        granted = dict(
            con.execute("SELECT purpose, count(*) FROM consent_state WHERE status = 'granted' GROUP BY 1").fetchall()
        )
    customers = None
    if table_exists(con, "customer_source_records"):
        customers = int(con.execute("SELECT count(DISTINCT customer_id) FROM customer_source_records").fetchall()[0][0])
    return StoreSummary(
        identity_run=_identity_run(con),
        files=row[0],
        files_rejected=row[1],
        rows_in=row[2],
        rows_loaded=row[3],
        rows_quarantined=row[4],
        rows_suppressed=row[5],
        unbalanced_files=row[6],
        records=_count(con, "stg_records") or 0,
        customers=customers,
        profiles=_count(con, "customer_profiles"),
        consent_rows=_count(con, "consent_state"),
        granted_by_purpose=granted,
    )

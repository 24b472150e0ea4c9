"""The closing summary of a run: what was built, readable in five seconds. Counts only, no values."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from cdp.store import quarantine_reasons, table_exists


@dataclass
class Intake:
    """Files and rows as ``ingest_batches`` counts them: every row in is loaded, quarantined or suppressed."""

    files: int
    rejected: int
    rows_in: int
    loaded: int
    quarantined: int
    suppressed: int

    def rows(self) -> str:
        return (
            f"{self.rows_in:,} = {self.loaded:,} loaded + {self.quarantined:,} quarantined + "
            f"{self.suppressed:,} suppressed"
        )


@dataclass
class StoreSummary:
    run: Intake  # the files this run ingested (all of them when the caller did not say what was there before)
    store: Intake  # every file the store has ingested
    unbalanced_files: int
    records: int
    customers: int | None
    profiles: int | None
    consent_rows: int | None
    granted_by_purpose: dict[str, int]
    identity_run: str | None = None  # how the last identity run ran: full (why) or incremental (how much)
    #: This run's quarantined rows by reason (fixed texts naming columns), most first.
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        run, store = self.run, self.store
        files = f"files ingested      {run.files} ({run.rejected} rejected)"
        if store != run:  # an incremental run: the store's totals beside this run's
            files += f"; the store holds {store.files} ({store.rejected} rejected)"
        rows = f"rows in             {run.rows()}"
        if store != run:
            rows += f"; the store {store.rows_in:,}"
        if self.unbalanced_files:
            rows += f"  [{self.unbalanced_files} files do not add up!]"
        out = [files, rows]
        if self.quarantine_reasons:
            reasons = list(self.quarantine_reasons.items())
            shown = ", ".join(f"{n:,} {reason}" for reason, n in reasons[:_REASONS_SHOWN])
            more = f" and {len(reasons) - _REASONS_SHOWN} more reasons" if len(reasons) > _REASONS_SHOWN else ""
            out.append(f"quarantined         {shown}{more} (rows in table quarantine)")
        out.append(f"source records      {self.records:,}")
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


#: Quarantine reasons the summary names; the rest are counted.
_REASONS_SHOWN = 4


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


_INTAKE = (
    "SELECT count(*), count(*) FILTER (status IN ('rejected', 'failed')), coalesce(sum(rows_in), 0), "
    "coalesce(sum(rows_loaded), 0), coalesce(sum(rows_quarantined), 0), coalesce(sum(rows_suppressed), 0) "
    "FROM ingest_batches"
)


#: Predicate over ``ingest_batches`` inside :func:`_registered`: a batch that was not there before the run.
_NEW_BATCHES = "batch_id NOT IN (SELECT batch_id FROM _batches_before)"


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, before: set[str]) -> Iterator[None]:
    con.register("_batches_before", pd.DataFrame({"batch_id": sorted(before)}, dtype=object))
    try:
        yield
    finally:
        con.unregister("_batches_before")


def batch_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The batches the store has ingested (to tell a run's own from them afterwards)."""
    if not table_exists(con, "ingest_batches"):
        return set()
    return {row[0] for row in con.execute("SELECT batch_id FROM ingest_batches").fetchall()}


def rejected_files(con: duckdb.DuckDBPyConnection, before: set[str] | None = None) -> tuple[list[str], int]:
    """The errors of the files this run rejected (batches not in ``before``; all when None), and how many
    files earlier runs rejected that no later batch of the same file name has replaced (a fixed file dropped
    again under its name is no longer counted)."""
    with _registered(con, before or set()):
        errors = con.execute(
            f"""SELECT error, {_NEW_BATCHES},
                       EXISTS (SELECT 1 FROM ingest_batches later
                               WHERE later.file = b.file AND later.status = 'loaded'
                                 AND later.ingested_at > b.ingested_at) AS replaced
                FROM ingest_batches b WHERE error IS NOT NULL ORDER BY ingested_at"""
        ).fetchall()
    return [e for e, new, _ in errors if new], sum(1 for _, new, replaced in errors if not new and not replaced)


def summarise(con: duckdb.DuckDBPyConnection, before: set[str] | None = None) -> StoreSummary:
    """The store's counts; the files and rows of this run are those of batches not in ``before`` (the batch
    ids :func:`batch_ids` gave before the run), or all of them when ``before`` is None."""
    store = Intake(*con.execute(_INTAKE).fetchall()[0])
    run = store
    with _registered(con, before or set()):
        if before is not None:
            run = Intake(*con.execute(f"{_INTAKE} WHERE {_NEW_BATCHES}").fetchall()[0])
        new = [r[0] for r in con.execute(f"SELECT batch_id FROM ingest_batches WHERE {_NEW_BATCHES}").fetchall()]
    reasons = quarantine_reasons(con, new) if table_exists(con, "quarantine") else {}
    unbalanced = con.execute(
        "SELECT count(*) FROM ingest_batches WHERE rows_in <> rows_loaded + rows_quarantined + rows_suppressed"
    ).fetchall()[0][0]
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
        run=run,
        store=store,
        unbalanced_files=int(unbalanced),
        records=_count(con, "stg_records") or 0,
        customers=customers,
        profiles=_count(con, "customer_profiles"),
        consent_rows=_count(con, "consent_state"),
        granted_by_purpose=granted,
        quarantine_reasons=reasons,
    )

"""Great Expectations suites run as Dagster asset checks, one per validated table.

Check names are constants so that the UI, tests and alerts can refer to them.
"""

import dagster as dg

from cdp.quality import mark_validated, unvalidated_batches, validate_table
from pipelines.resources import CdpStore

RAW_EXPECTATIONS = "raw_expectations_pass"
STAGED_EXPECTATIONS = "staged_expectations_pass"


def expectations_check(table: str, *, blocking: bool) -> dg.AssetChecksDefinition:
    """An asset check validating ``table`` with its Great Expectations suite (cdp.quality.SUITES)."""
    name = STAGED_EXPECTATIONS if table.startswith("stg_") else RAW_EXPECTATIONS

    @dg.asset_check(
        asset=table,
        name=name,
        blocking=blocking,
        description=(
            f"Great Expectations suite `{table}_suite` passes on the rows of {table} from batches not yet "
            "validated (every row on a full refresh). Counts only, no values."
            + ("" if blocking else " A batch that fails is reported once: the warning stays in this check's history.")
        ),
    )
    def _check(store: CdpStore) -> dg.AssetCheckResult:
        severity = dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN
        with store.session() as con:
            batches = unvalidated_batches(con, table)
            if not batches and not store.full_refresh:
                return dg.AssetCheckResult(passed=True, severity=severity, metadata={"rows": 0, "batches": 0})
            result = validate_table(con, table, batches=None if store.full_refresh else batches)
            # A blocking suite re-validates its failed batches until they pass (the run stops before anything
            # reads them). A warning is raised once per batch: an ingested file is never re-read, so the same
            # rows would fail every later run and bury the warnings about new ones.
            if result.success or not blocking:
                mark_validated(con, table, batches)
        return dg.AssetCheckResult(
            passed=result.success, severity=severity, metadata={**result.metadata(), "batches": len(batches)}
        )

    return _check

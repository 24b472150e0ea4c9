"""Great Expectations suites run as Dagster asset checks, one per validated table.

Check names are constants so that the UI, tests and alerts can refer to them.
"""

import dagster as dg

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
        description=f"Great Expectations suite `{table}_suite` passes on {table} (counts only, no values).",
    )
    def _check(store: CdpStore) -> dg.AssetCheckResult:
        from cdp.quality import validate_table

        with store.session() as con:
            result = validate_table(con, table)
        return dg.AssetCheckResult(
            passed=result.success,
            severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
            metadata=result.metadata(),
        )

    return _check

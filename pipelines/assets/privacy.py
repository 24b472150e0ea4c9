"""Privacy layer: restrictions and objections follow customers when identities are re-resolved."""
# No `from __future__ import annotations` here: Dagster reads the context and resource annotations.

import dagster as dg

from pipelines.resources import CdpStore

RESTRICTIONS_FOLLOW_CUSTOMERS = "restrictions_follow_current_customers"


@dg.asset(
    name="restrictions",
    group_name="privacy",
    kinds={"duckdb"},
    deps=[dg.AssetKey("customer_source_records"), dg.AssetKey("customer_id_history")],
    description=(
        "Active restrictions (Art. 18) and objections to direct marketing (Art. 21), by customer id. "
        "Grain: one row per customer, request and kind. Written by `cdp privacy restrict`; this asset "
        "carries each active one to the ids that replaced its customer after a merge or split "
        "(customer_id_history), so an identity re-run cannot release anyone. PII: none (customer ids only)."
    ),
)
def restrictions(context: dg.AssetExecutionContext, store: CdpStore) -> dg.MaterializeResult:
    from consent.restriction import active_restrictions, carry_restrictions, ensure_restrictions

    with store.session() as con:
        ensure_restrictions(con)
        carried = carry_restrictions(con)
        active = len(active_restrictions(con))
    context.log.info(f"{active} active restrictions, {carried} carried to new customer ids")
    return dg.MaterializeResult(metadata={"active": active, "carried_to_new_ids": carried})


@dg.asset_check(
    asset="restrictions",
    name=RESTRICTIONS_FOLLOW_CUSTOMERS,
    blocking=True,
    description="Every customer whose id replaced a restricted one is restricted too.",
)
def restrictions_follow_current_customers(store: CdpStore) -> dg.AssetCheckResult:
    from consent.restriction import restrictions_not_carried

    with store.session() as con:
        released = restrictions_not_carried(con)
    return dg.AssetCheckResult(passed=released == 0, metadata={"restrictions_not_carried": released})

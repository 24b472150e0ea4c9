"""Identity layer: staged records resolved into customers with stable ids, and checks on the result."""
# No `from __future__ import annotations` here: Dagster reads the context and resource annotations.

from collections.abc import Iterator

import dagster as dg

from identity.resolve import OUTLIER_ACCOUNTS, OUTLIER_CRM_CONTACTS, OUTLIER_UNITS
from pipelines.resources import ROW_COUNT, CdpStore

#: Check names, as constants so the UI, tests and alerts can refer to them.
NO_OUTLIER_CUSTOMERS = "no_outlier_customer_clusters"
HUB_IDENTIFIERS_HELD_BACK = "hub_identifiers_held_back"

#: Above this share of multi-unit customers flagged as outliers, the cluster-size check fails.
OUTLIER_SHARE_LIMIT = 0.001


#: The identity step's checks, evaluated on the run it has just made (see pipelines.checks for why in the step).
IDENTITY_CHECKS = [
    dg.AssetCheckSpec(
        NO_OUTLIER_CUSTOMERS,
        asset="customer_source_records",
        description=(
            f"Customers that look over-merged: more than {OUTLIER_CRM_CONTACTS} CRM contacts, more than "
            f"{OUTLIER_ACCOUNTS} online accounts or more than {OUTLIER_UNITS} units. Fails when they exceed "
            f"{OUTLIER_SHARE_LIMIT:.1%} of multi-unit customers. Counts only."
        ),
    ),
    dg.AssetCheckSpec(
        HUB_IDENTIFIERS_HELD_BACK,
        asset="customer_source_records",
        description=(
            "Hub identifiers kept from hard-linking on this run, by type: shared by units that disagree on who "
            "they are (a household phone: counted, expected), or by more units than the per-type limit "
            "(max_records_per_identifier); and blocking blocks more crowded than max_units_per_block that the "
            "model paired nobody in (crowded_blocks, full runs). Warns when an identifier is over its limit or "
            "a block is crowded: a default value flooding an export (a till's 'no customer' card, a shop's own "
            "email) that the guards kept out of the customers, but that its source should stop sending. Counts "
            "only."
        ),
    ),
]


#: The tables the identity step writes besides ``customer_source_records`` that other code reads, declared
#: as assets of the same step so that the UI shows their lineage and row counts (``identity_runs`` and the
#: incremental state are the step's own bookkeeping).
IDENTITY_EDGES = "identity_edges"
CUSTOMER_ID_HISTORY = "customer_id_history"


def _identity_table(name: str, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        name, group_name="identity", kinds={"duckdb"}, deps=[dg.AssetKey("stg_records")], description=description
    )


@dg.multi_asset(
    name="customer_source_records",
    can_subset=False,
    specs=[
        _identity_table(
            "customer_source_records",
            "Which customer every staged web, app, store and CRM record belongs to. Grain: one row per "
            "`stg_records` row (source, source_record_id, customer_id, unit_id). Built from the identifier graph "
            "(shared user_id, loyalty_id, email, phone, crm_id; hub keys held back) and the saved Splink person "
            "model, clustered with stable customer ids. Also records each run in `identity_runs`. Incremental: "
            "only the first-pass components around the units staging changed are re-resolved (state in "
            "`identity_units`, `identity_unit_keys`, `identity_model_pairs`, and each customer's size in "
            "`identity_customer_sizes`); full on the first run, after an erasure, when the model, threshold or "
            "limits change, or when a batch makes a blocking block cross the crowd limit. PII: none directly; "
            "unit_id embeds source keys (crm_id, cookie, device id).",
        ),
        _identity_table(
            IDENTITY_EDGES,
            "Why units are one customer, written by the customer_source_records step. Grain: one row per pair of "
            "units joined (unit_id_l, unit_id_r) with its evidence: a key type and rule, or `splink` and the "
            "match weight. Read by `cdp identity explain` and the web console. PII: none (units and key types, "
            "never key values).",
        ),
        _identity_table(
            CUSTOMER_ID_HISTORY,
            "Customer ids that changed, appended by the customer_source_records step: `merged` (the old customer "
            "now lives inside the new one), `split` (part of it moved to the new one) or `retired`. Grain: one "
            "row per old id, new id and run. Read by restrictions and profile lookups to follow an old id. PII: "
            "none (customer ids only).",
        ),
    ],
    check_specs=IDENTITY_CHECKS,
)
def customer_source_records(
    context: dg.AssetExecutionContext, store: CdpStore
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from identity.resolve import resolve_identities

    with store.session() as con:
        stats = resolve_identities(con, store.settings, full=store.full_refresh or None)
        history = int(con.execute(f"SELECT count(*) FROM {CUSTOMER_ID_HISTORY}").fetchall()[0][0])
    scope = (
        f"incremental: {stats['changed_units']} changed units, {stats['region_units']} re-resolved"
        if stats["mode"] == "incremental"
        else f"full: {stats['full_reason']}"
    )
    context.log.info(
        f"{stats['records']} records in {stats['units']} units -> {stats['customers']} customers "
        f"({stats['new_customers']} new, {stats['merged']} merged, {stats['split']} split) "
        f"in {stats['seconds']} s ({scope})"
    )
    keep = (
        "records", "units", "customers", "new_customers", "kept_customers", "merged", "split", "retired",
        "person_units", "crowded_blocks", "model_pairs", "edges", "hub_keys_conflict", "hub_keys_over_limit",
        "placeholder_values", "shared_units", "largest_customer_units", "outlier_customers", "seconds",
        "graph_seconds", "model_seconds", "cluster_seconds", "write_seconds", "run_id", "mode", "full_reason",
        "changed_units", "identity_changed_units", "region_units", "changed_customers", "person_units_scored",
    )  # fmt: skip
    yield dg.MaterializeResult(
        asset_key="customer_source_records",
        metadata={**{k: stats[k] for k in keep if k in stats}, ROW_COUNT: stats["records"]},
    )
    run = {"run_id": stats["run_id"], "mode": stats["mode"]}
    yield dg.MaterializeResult(asset_key=IDENTITY_EDGES, metadata={**run, ROW_COUNT: stats["identity_edges"]})
    changed = {"merged": stats["merged"], "split": stats["split"], "retired": stats["retired"]}
    yield dg.MaterializeResult(asset_key=CUSTOMER_ID_HISTORY, metadata={**run, **changed, ROW_COUNT: history})
    yield no_outlier_customer_clusters(stats)
    yield hub_identifiers_held_back(stats)


def no_outlier_customer_clusters(stats: dict) -> dg.AssetCheckResult:
    """The :data:`NO_OUTLIER_CUSTOMERS` check of an identity run, from its stats."""
    outliers = int(stats.get("outlier_customers", 0))
    multi = int(stats.get("multi_unit_customers", 0))
    return dg.AssetCheckResult(
        asset_key=dg.AssetKey("customer_source_records"),
        check_name=NO_OUTLIER_CUSTOMERS,
        passed=bool(stats) and outliers <= OUTLIER_SHARE_LIMIT * max(multi, 1),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "outlier_customers": outliers,
            "multi_unit_customers": multi,
            "largest_customer_units": int(stats.get("largest_customer_units", 0)),
        },
    )


def hub_identifiers_held_back(stats: dict) -> dg.AssetCheckResult:
    """The :data:`HUB_IDENTIFIERS_HELD_BACK` check of an identity run, from its stats."""
    metadata: dict[str, int] = {
        k: int(v)
        for k, v in stats.items()
        if k.startswith(
            ("hub_keys_conflict", "hub_keys_over_limit", "placeholder_values", "shared_units", "crowded_blocks")
        )
    }
    floods = metadata.get("hub_keys_over_limit", 0) + metadata.get("crowded_blocks", 0)
    return dg.AssetCheckResult(
        asset_key=dg.AssetKey("customer_source_records"),
        check_name=HUB_IDENTIFIERS_HELD_BACK,
        passed=bool(stats) and not floods,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
    )

"""The identity step's checks, from the stats of the run it has just made: what makes each pass or warn."""

from __future__ import annotations

import pytest

from pipelines.assets import identity as checks


@pytest.mark.parametrize(
    ("stats", "passed"),
    [
        (
            {
                "hub_keys_conflict": 26,
                "hub_keys_conflict.phone_e164": 22,
                "hub_keys_over_limit": 0,
                "crowded_blocks": 0,
            },
            True,
        ),
        ({"hub_keys_conflict": 26, "hub_keys_over_limit": 1, "hub_keys_over_limit.loyalty_id": 1}, False),
        ({"hub_keys_conflict": 0, "hub_keys_over_limit": 0, "crowded_blocks": 2}, False),
    ],
    ids=["households only", "an identifier over its limit", "crowded blocks"],
)
def test_hub_check_warns_when_a_default_value_floods_not_for_households(stats: dict, passed: bool):
    result = checks.hub_identifiers_held_back(stats)
    assert result.passed is passed
    assert result.metadata["hub_keys_conflict"].value == stats["hub_keys_conflict"]


@pytest.mark.parametrize(
    ("outliers", "multi", "passed"), [(0, 5000, True), (5, 5000, True), (6, 5000, False)], ids=["none", "at", "over"]
)
def test_outlier_check_warns_above_a_share_of_multi_unit_customers(outliers: int, multi: int, passed: bool):
    result = checks.no_outlier_customer_clusters({"outlier_customers": outliers, "multi_unit_customers": multi})
    assert result.passed is passed and result.severity == checks.dg.AssetCheckSeverity.WARN
    assert result.metadata["outlier_customers"].value == outliers

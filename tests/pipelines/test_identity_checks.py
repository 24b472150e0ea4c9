"""The identity asset checks read the latest identity run's stats: what makes each pass or warn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdp.store import connect
from identity.resolve import DDL
from pipelines.assets import identity as checks
from pipelines.resources import CdpStore


def store_with_stats(tmp_path: Path, stats: dict) -> CdpStore:
    con = connect(tmp_path / "cdp.duckdb")
    for ddl in DDL:
        con.execute(ddl)
    con.execute("INSERT INTO identity_runs (run_id, finished_at, stats) VALUES ('r1', now(), ?)", [json.dumps(stats)])
    con.close()
    return CdpStore(db_path=str(tmp_path / "cdp.duckdb"), home=str(tmp_path / "home"))


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
def test_hub_check_warns_when_a_default_value_floods_not_for_households(tmp_path: Path, stats: dict, passed: bool):
    result = checks.hub_identifiers_held_back(store_with_stats(tmp_path, stats))
    assert result.passed is passed
    assert result.metadata["hub_keys_conflict"].value == stats["hub_keys_conflict"]

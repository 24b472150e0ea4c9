"""The restrictions asset and its check, materialised with Dagster on a temporary store.

Restriction commands themselves are tested in tests/consent/privacy; this covers only the carrying of a
restriction to the id that replaced its customer after identities were re-resolved.
"""

import dagster as dg

from cdp.store import connect
from consent.restriction import ensure_restrictions
from identity.resolve import ensure_identity_schema
from pipelines.assets.privacy import restrictions, restrictions_follow_current_customers
from pipelines.resources import CdpStore


def test_a_restriction_follows_a_merged_customer(tmp_path):
    db = tmp_path / "cdp.duckdb"
    con = connect(db)
    ensure_restrictions(con)
    ensure_identity_schema(con)
    con.execute("INSERT INTO restrictions VALUES ('cus_1', 'PR-1', 'objection', now(), NULL)")
    con.execute("INSERT INTO customer_id_history VALUES ('cus_1', 'cus_9', 'merged', 'run-2', now())")
    con.close()
    store = CdpStore(db_path=str(db), home=str(tmp_path / "home"))
    result = dg.materialize(
        [restrictions, restrictions_follow_current_customers],
        resources={"store": store},
        selection=dg.AssetSelection.all(),
    )
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed
    con = connect(db, read_only=True)
    active = con.execute("SELECT customer_id, kind FROM restrictions WHERE lifted_at IS NULL ORDER BY 1").fetchall()
    con.close()
    assert active == [("cus_1", "objection"), ("cus_9", "objection")]

"""The privacy tests' world is what the other privacy tests assume: Alice is one customer across CRM,
store, web and app, Bob (who shares her landline) is another, and the database file shows her to grep.
Does not test erasure or access themselves."""

from __future__ import annotations

from types import SimpleNamespace

import duckdb


def test_alice_is_one_customer_across_four_sources_and_bob_is_another(world, pw: SimpleNamespace) -> None:
    con = duckdb.connect(str(world.settings.db_path), read_only=True)
    alice = con.execute(
        "SELECT source, count(*) FROM customer_source_records WHERE customer_id = ? GROUP BY 1 ORDER BY 1",
        [world.alice],
    ).fetchall()
    assert alice == [("app", 2), ("crm", 1), ("store", 1), ("web", 2)]
    assert world.bob != world.alice and world.carol not in (world.alice, world.bob)
    assert pw.customer_of(con, "store", "T-2") == world.bob  # the landline-only receipt is Bob's
    reasons = [r[0] for r in con.execute("SELECT reason FROM quarantine ORDER BY 1").fetchall()]
    assert reasons == [
        "empty required value: event_time", "empty required value: transaction_time",
        "malformed CSV line: too many columns",
    ]  # fmt: skip
    members = {r[0] for r in con.execute("SELECT customer_id FROM export_members").fetchall()}
    assert {world.alice, world.bob} <= members
    con.close()


def test_the_database_file_shows_alice_to_grep_before_any_erasure(world, pw: SimpleNamespace) -> None:
    data = pw.file_bytes(world.settings.db_path)
    assert all(s in data for s in (b"Alice.Smith+shop@gmail.com", b"alicesmith@gmail.com", b"L-ALICE-77"))
    assert b"alice.smith+shop@gmail.com" in world.export_path.read_bytes()

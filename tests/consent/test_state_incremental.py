"""Incremental consent state: an update for some customers equals a full rebuild; not the ledger or enforcement.

Each test changes the conftest world (seven customers, state computed in full at day 20), updates the state
for the customers identity would report, compares with a full rebuild, and checks who was recomputed.
"""

from __future__ import annotations

import random
from datetime import datetime

import dagster as dg
import duckdb
import pandas as pd
import pytest

from cdp.store import connect, raw_ddl
from consent.ledger import sync_ledger
from consent.restriction import ensure_restrictions
from consent.state import build_consent_state, state_current
from pipelines.assets import profiles as assets
from pipelines.resources import CdpStore

LATER = datetime(2026, 1, 20, 10)  # an hour after the fixture's full computation


def state(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """consent_state without computed_at (rows an update leaves alone keep theirs), in a stable order."""
    frame = con.execute("SELECT * EXCLUDE (computed_at) FROM consent_state ORDER BY customer_id, purpose").df()
    return frame.reset_index(drop=True)


def update(con: duckdb.DuckDBPyConnection, changed: list[str], as_of: datetime = LATER) -> dict[str, int]:
    sync_ledger(con)
    con.execute("CREATE OR REPLACE TEMP TABLE _changed AS SELECT unnest(?::VARCHAR[]) AS customer_id", [changed])
    return build_consent_state(con, as_of=as_of, customers="_changed")


def recomputed_rows(con: duckdb.DuckDBPyConnection, as_of: datetime = LATER) -> set[str]:
    rows = con.execute("SELECT DISTINCT customer_id FROM consent_state WHERE computed_at = ?", [as_of]).fetchall()
    return {r[0] for r in rows}


def assert_equals_full_rebuild(con: duckdb.DuckDBPyConnection, as_of: datetime = LATER) -> pd.DataFrame:
    incremental = state(con)
    build_consent_state(con, as_of=as_of)
    pd.testing.assert_frame_equal(incremental, state(con))
    return incremental


def relink(con: duckdb.DuckDBPyConnection, old: str, new: str) -> None:
    con.execute("UPDATE customer_source_records SET customer_id = ? WHERE customer_id = ?", [new, old])


def test_records_added_to_a_customer_recompute_that_customer_only(con, w):
    w.add_record(con, "cD", "store", "tD", w.at(12), loyalty_id="LD", phone_e164="+447911100444", store_id="s3")
    w.add_consent(con, "k70", w.at(11), "sms_marketing", "granted", loyalty_id="LD")
    counts = update(con, ["cD"])
    assert counts["customers_recomputed"] == 1 and recomputed_rows(con) == {"cD"}
    assert assert_equals_full_rebuild(con).query("customer_id == 'cD'")["status"].tolist() == ["granted"]


def test_a_record_carrying_values_the_customer_holds_recomputes_no_one(con, w):
    # Another web visit of cA's cookie and account: identity reports cA, whose values (and so whose state, and
    # every other carrier's) are what they were. Nobody is recomputed, and the stored values are not rewritten.
    keys = con.execute("SELECT * FROM consent_state_keys ORDER BY ALL").fetchall()
    w.add_record(con, "cA", "web", "wA2", w.at(12), anonymous_id="anonA", user_id="uA", event_type="page_view")
    counts = update(con, ["cA"])
    assert counts["customers_recomputed"] == 0 and recomputed_rows(con) == set()
    assert con.execute("SELECT * FROM consent_state_keys ORDER BY ALL").fetchall() == keys
    assert_equals_full_rebuild(con)


def test_new_customer_on_a_household_phone_recomputes_every_carrier_of_the_phone(con, w):
    w.add_record(con, "cH", "store", "tH", w.at(12), phone_e164=w.HOUSEHOLD, store_id="s1")
    counts = update(con, ["cH"])
    # cB and cC carry the phone whose fan-out went from 2 to 3; the household withdrawal now reaches cH.
    assert counts["customers_recomputed"] == 3 and recomputed_rows(con) == {"cB", "cC", "cH"}
    assert w.states(con, "email_marketing")["cH"] == "withdrawn"
    assert_equals_full_rebuild(con)


def test_merge_makes_the_household_phone_unique_and_its_grant_applies(con, w):
    assert "cB" not in w.states(con, "sms_marketing")
    relink(con, "cC", "cB")  # identity merged cC into cB: both ids are reported
    counts = update(con, ["cB", "cC"])
    assert w.states(con, "sms_marketing")["cB"] == "granted"  # the household grant now points to one customer
    assert "cC" not in set(state(con)["customer_id"])  # the retired id keeps no state
    assert counts["customers_recomputed"] == 2
    assert_equals_full_rebuild(con)


def test_changed_phone_on_a_record_frees_the_old_number_for_its_other_carrier(con, w):
    # cB's store record is re-exported with another phone: the household number is left to cC alone, whose
    # records did not change; only the stored buckets of cB's old values lead the update to cC.
    con.execute("UPDATE stg_records SET phone_e164 = '+447911100555' WHERE source_record_id = 'tB'")
    counts = update(con, ["cB"])
    assert w.states(con, "sms_marketing")["cC"] == "granted"
    assert counts["customers_recomputed"] == 2 and recomputed_rows(con) == {"cB", "cC"}
    assert_equals_full_rebuild(con)


def test_new_withdrawal_through_a_shared_phone_recomputes_the_customers_it_reaches(con, w):
    w.add_consent(con, "k71", w.at(15), "email_marketing", "withdrawn", phone_e164=w.HOUSEHOLD)
    counts = update(con, [])
    assert counts["customers_recomputed"] == 2 and recomputed_rows(con) == {"cB", "cC"}
    assert w.states(con, "email_marketing")["cC"] == "withdrawn"
    assert_equals_full_rebuild(con)


def test_a_batch_synced_after_the_last_computation_is_new_whole_and_then_seen(con, w):
    # The state knows which ledger events it took in by their batch (a sync appends a batch's events at once):
    # the events of a batch it has not seen reach whom they name; the next update takes none of them as new.
    w.add_consent(con, "k81", w.at(15), "email_marketing", "withdrawn", phone_e164=w.HOUSEHOLD,
                  batch_id="b81", row_number=1)  # fmt: skip
    w.add_consent(con, "k82", w.at(15), "sms_marketing", "withdrawn", email="alee@mailbox.com",
                  batch_id="b81", row_number=2)  # fmt: skip
    update(con, [])
    assert recomputed_rows(con) == {"cA", "cB", "cC"}
    assert w.states(con, "email_marketing")["cC"] == "withdrawn" and w.states(con, "sms_marketing")["cA"] == "withdrawn"
    seen = "SELECT origin, batch_id FROM consent_state_seen_batches WHERE batch_id IS NOT DISTINCT FROM 'b81'"
    assert con.execute(seen).fetchall() == [("consent", "b81")]
    later = datetime(2026, 1, 20, 11)
    assert update(con, [], as_of=later)["customers_recomputed"] == 0
    assert_equals_full_rebuild(con, as_of=later)


def test_fan_out_counts_carriers_that_are_not_recomputed(con, w):
    # cA and cD share a phone; a grant naming only that phone grants nobody. When a new event has cA alone
    # recomputed, the phone's fan-out must still count cD.
    shared = "+447911100666"
    w.add_record(con, "cA", "app", "pA", w.at(3), device_id="devA", phone_e164=shared)
    w.add_record(con, "cD", "store", "tQ", w.at(3), phone_e164=shared, store_id="s2")
    w.add_consent(con, "k75", w.at(3), "sms_marketing", "granted", phone_e164=shared)
    w.rebuild(con, as_of=w.at(20))
    w.add_consent(con, "k76", w.at(15), "analytics", "withdrawn", email="alee@mailbox.com")
    counts = update(con, [])
    assert counts["customers_recomputed"] == 1 and recomputed_rows(con) == {"cA"}
    row = con.execute("SELECT event_id FROM consent_state WHERE customer_id = 'cA' AND purpose = 'sms_marketing'")
    assert row.fetchall() == [("consent:k2",)]  # not the ambiguous k75
    assert_equals_full_rebuild(con)


def test_a_second_customer_on_a_grants_other_identifier_undoes_the_grant(con, w):
    # A grant naming cA's email and a phone nobody carries grants cA; once a new customer carries that phone,
    # the grant points to two customers and grants nobody, though cA's records and values did not change.
    w.add_consent(con, "k72", w.at(10), "analytics", "granted", email="alee@mailbox.com", phone_e164="+447911100777")
    update(con, [])
    assert w.states(con, "analytics") == {"cA": "granted"}
    w.add_record(con, "cJ", "app", "pJ", w.at(12), device_id="devJ", phone_e164="+447911100777")
    later = datetime(2026, 1, 20, 11)
    counts = update(con, ["cJ"], as_of=later)
    assert w.states(con, "analytics") == {} and counts["customers_recomputed"] == 2
    assert_equals_full_rebuild(con, as_of=later)


def test_future_dated_event_applies_once_its_time_comes(con, w):
    w.add_consent(con, "k73", w.at(25), "email_marketing", "withdrawn", email="alee@mailbox.com")
    update(con, [])
    assert w.states(con, "email_marketing")["cA"] == "granted"
    assert_equals_full_rebuild(con)  # the full rebuild is the new basis: as_of LATER
    day26 = w.at(26)
    counts = update(con, [], as_of=day26)  # nothing new in the ledger or identity: only the time moved
    assert counts["customers_recomputed"] == 1 and recomputed_rows(con, day26) == {"cA"}
    assert w.states(con, "email_marketing")["cA"] == "withdrawn"
    assert_equals_full_rebuild(con, as_of=day26)


def test_an_update_with_nothing_new_recomputes_no_one(con, w):
    before = state(con)
    counts = update(con, [])  # no changed customer, no new event, none dated between the two computations
    assert counts["customers_recomputed"] == 0 and recomputed_rows(con) == set()
    pd.testing.assert_frame_equal(state(con), before)
    assert_equals_full_rebuild(con)


def test_loose_withdrawal_keeps_its_reach_once_its_email_key_belongs_to_someone(con, w):
    con.execute(raw_ddl("consent"))
    assert not state_current(con)  # loose withdrawals now apply: the basis is stale, a full rebuild is due
    w.add_consent(
        con, "k74", w.at(10), "analytics", "withdrawn", email="ddlee@mailbox.com", batch_id="b9", row_number=1
    )
    con.execute(
        "INSERT INTO raw_consent (consent_id, event_time, purpose, status, email, batch_id, row_number) "
        "VALUES ('k74', ?, 'analytics', 'withdrawn', 'dlee+x@mailbox.con', 'b9', 1)",
        [w.at(10)],
    )
    w.rebuild(con, as_of=w.at(20))
    assert state_current(con) and w.states(con, "analytics") == {"cD": "withdrawn"}  # through the loose key
    w.add_record(con, "cK", "web", "wK", w.at(12), anonymous_id="anonK", email="ddlee@mailbox.com")
    counts = update(con, ["cK"])
    # The written email now reaches cK too; cD, reached loosely, stays withdrawn (it used to lose it).
    assert w.states(con, "analytics") == {"cD": "withdrawn", "cK": "withdrawn"}
    assert counts["customers_recomputed"] == 2 and recomputed_rows(con) == {"cD", "cK"}
    assert_equals_full_rebuild(con)


def test_update_needs_a_basis_and_a_table_name(con):
    con.execute("DROP TABLE consent_state_basis")
    assert not state_current(con)
    with pytest.raises(ValueError, match="rebuild it in full"):
        build_consent_state(con, as_of=LATER, customers="_changed")
    build_consent_state(con, as_of=LATER)
    with pytest.raises(ValueError, match="not a table name"):
        build_consent_state(con, as_of=LATER, customers="x; DROP TABLE consent_state")


def test_assets_rebuild_in_full_first_then_only_what_identity_changed(tmp_path, w):
    db = tmp_path / "cdp.duckdb"
    con = connect(db)
    w.make_world(con)
    w.identity_run(con, "r1", datetime(2026, 1, 1), None)
    con.close()
    store = CdpStore(db_path=str(db), home=str(tmp_path / "home"))
    nodes = [assets.customer_profiles, assets.consent_events, assets.consent_state]

    def run() -> dict[str, dict[str, object]]:
        result = dg.materialize(nodes, resources={"store": store})
        assert result.success
        return {
            node: {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}
            for node in ("customer_profiles", "consent_state")
        }

    first = run()
    assert first["customer_profiles"]["mode"] == "full" and first["consent_state"]["mode"] == "full"
    assert first["customer_profiles"]["customers_recomputed"] == 7
    assert first["consent_state"]["customers_recomputed"] == 7  # every customer with records
    con = connect(db)
    w.add_record(con, "cH", "store", "tH", w.at(12), phone_e164=w.HOUSEHOLD, store_id="s1")
    w.identity_run(con, "r2", datetime(2026, 1, 2), ["cH"])
    con.close()
    second = run()
    assert second["customer_profiles"] == {**second["customer_profiles"], "mode": "incremental",
                                           "customers_recomputed": 1, "profiles": 8}  # fmt: skip
    assert second["consent_state"]["mode"] == "incremental"
    assert second["consent_state"]["customers_recomputed"] == 3  # cH and the two other household carriers
    third = run()  # nothing changed since
    assert third["customer_profiles"]["customers_recomputed"] == 0


def test_no_basis_before_there_are_customers():
    con = duckdb.connect(":memory:")
    build_consent_state(con, as_of=LATER)  # a ledger but no staged records or links yet
    assert con.execute("SELECT count(*) FROM consent_state_basis").fetchall() == [(0,)]
    assert not state_current(con)


def test_a_consent_event_re_sent_as_a_withdrawal_withdraws_and_the_grant_stays_in_the_ledger(con, w):
    assert w.states(con, "email_marketing")["cA"] == "granted"  # k1, day 1
    con.execute("DELETE FROM stg_consent WHERE consent_id = 'k1'")  # staging keeps the newest copy of k1
    w.add_consent(con, "k1", w.at(15), "email_marketing", "withdrawn", email="alee@mailbox.com")
    counts = update(con, [])
    assert counts["customers_recomputed"] >= 1 and w.states(con, "email_marketing")["cA"] == "withdrawn"
    assert_equals_full_rebuild(con)
    versions = con.execute("SELECT event_id, status FROM consent_events WHERE consent_id = 'k1' ORDER BY 1").fetchall()
    assert [s for _, s in versions] == ["granted", "withdrawn"] and versions[1][0].startswith("consent:k1@")
    sync_ledger(con)  # the same content again appends nothing
    assert con.execute("SELECT count(*) FROM consent_events WHERE consent_id = 'k1'").fetchall()[0][0] == 2


def test_an_app_event_re_sent_as_a_push_opt_out_withdraws(con, w):
    assert w.states(con, "push_marketing") == {"cF": "granted"}  # pF2, push_opt_in
    con.execute("DELETE FROM stg_records WHERE source_record_id = 'pF2'")
    con.execute("DELETE FROM customer_source_records WHERE source_record_id = 'pF2'")
    w.add_record(con, "cF", "app", "pF2", w.at(14), device_id="devF", event_type="push_opt_out")
    update(con, ["cF"])
    assert w.states(con, "push_marketing") == {"cF": "withdrawn"}
    assert_equals_full_rebuild(con)


def test_the_basis_carries_the_rules_code():
    # An edit to the consent rules (this module or the ledger's) makes the stored basis stale, so the next
    # computation is full, whether or not its author bumped the version.
    from cdp.store import code_digest
    from consent import ledger, state

    assert f"(code {code_digest(state.__file__, ledger.__file__)})" in state.BASIS_VERSION


def test_a_changed_customers_value_no_event_names_recomputes_none_of_its_other_carriers(con, w):
    # cK shares cD's email, which no consent event names: nothing about cD's state can depend on who else
    # carries it, so cD is not recomputed (it used to be, as a carrier of a changed customer's value).
    w.add_record(con, "cK", "web", "wK", w.at(12), anonymous_id="anonK", email="dlee@mailbox.com")
    counts = update(con, ["cK"])
    assert counts["customers_recomputed"] == 1  # cK (neither has a state row: no event reaches them)
    assert_equals_full_rebuild(con)


EMAILS = [f"e{i}@mailbox.com" for i in range(6)]
PHONES = [f"+4479111002{i:02d}" for i in range(5)]
KEYS = {"email": EMAILS, "phone_e164": PHONES, "user_id": ["u0", "u1", "u2", "u3"], "loyalty_id": ["L0", "L1"]}


def _random_ids(rng: random.Random, most: int, dense: bool = False) -> dict[str, str]:
    """Up to ``most`` values of distinct kinds; ``dense``: out of two values a kind, so that most are shared."""
    kinds = rng.sample(sorted(KEYS), rng.randint(0, most))
    return {kind: rng.choice(KEYS[kind][:2] if dense else KEYS[kind]) for kind in kinds}


def _random_event(con: duckdb.DuckDBPyConnection, w, rng: random.Random, n: int, day: int, batch: str, loose: bool):
    """An event naming one or two values; ``batch``: a staged batch the ledger has not taken in yet."""
    ids = _random_ids(rng, 2, dense=rng.random() < 0.5) or {"email": rng.choice(EMAILS)}
    status = rng.choice(("granted", "granted", "withdrawn"))  # grants: their fan-out is what an update can miss
    purpose = rng.choice(("email_marketing", "sms_marketing"))
    w.add_consent(con, f"r{n}", w.at(day, rng.randint(0, 23)), purpose, status, batch_id=batch, row_number=n, **ids)
    if loose and status == "withdrawn" and "email" in ids:
        # As typed: in capitals with a doubled @ and a mistyped domain, which loose_email still reads as the
        # staged email's key (e0@@MAILBOX.CON: e0@mailbox); the staged event names another email, so only the
        # loose key can reach the customer.
        typed = ids["email"].replace("@", "@@").replace(".com", ".con").upper()
        w.add_consent(con, f"r{n}", w.at(day), purpose, status, batch_id=batch, row_number=n + 1000,
                      email=f"typo{n}@elsewhere.com")  # fmt: skip
        con.execute("DELETE FROM stg_consent WHERE consent_id = ? AND row_number = ?", [f"r{n}", n])
        con.execute(
            "INSERT INTO raw_consent (consent_id, event_time, purpose, status, email, batch_id, row_number) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [f"r{n}", w.at(day), purpose, status, typed, batch, n + 1000],
        )


def stored_values(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """consent_state_keys, the identifier values an update reads instead of the records, in a stable order."""
    return con.execute("SELECT * FROM consent_state_keys ORDER BY ALL").df()


def _full_rebuild_of_a_copy(con: duckdb.DuckDBPyConnection, as_of: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a full rebuild computes (the state and the stored values), on a copy of the database: the update's
    own basis is left as it is, so that what an update gets wrong can pile up over the rounds."""
    con.execute("ATTACH ':memory:' AS rebuilt")
    con.execute("COPY FROM DATABASE memory TO rebuilt")
    copy = con.cursor()
    try:
        copy.execute("USE rebuilt")
        build_consent_state(copy, as_of=as_of)
        return state(copy), stored_values(copy)
    finally:
        copy.close()
        con.execute("DETACH rebuilt")


@pytest.mark.parametrize("seed", range(12))
def test_random_changes_update_to_what_a_full_rebuild_computes(staging_ddl, w, seed):
    """Random small worlds whose customers share values a lot, events naming them, then rounds of random
    changes of the kinds identity reports (records added, deleted or moved to another customer, a value
    changed or dropped, customers merged or split, new events, some dated ahead, loose withdrawals reaching
    customers only by their typed email): after each round's update, the state equals a full rebuild's,
    and so do the identifier values stored for the next update, the update building on the previous rounds'."""
    rng = random.Random(seed)
    con = duckdb.connect(":memory:")
    for table in ("stg_records", "stg_consent", "customer_source_records"):
        con.execute(staging_ddl[table])
    ensure_restrictions(con)
    loose = seed % 2 == 0
    if loose:
        con.execute(raw_ddl("consent"))
    customers = [f"c{i}" for i in range(8)]
    records: dict[str, str] = {}  # record id -> customer
    for i in range(16):
        owner = customers[i % 8] if i < 8 else rng.choice(customers)
        ids = _random_ids(rng, 2)
        w.add_record(con, owner, "store", f"t{i}", w.at(rng.randint(1, 10)), **ids)
        records[f"t{i}"] = owner
    for n in range(20):
        _random_event(con, w, rng, n, rng.randint(1, 19), "b0", loose)
    w.rebuild(con, as_of=w.at(20))
    for round_ in range(1, 5):
        changed: set[str] = set()
        for step in range(rng.randint(1, 4)):
            change = rng.choice(("record", "value", "value", "move", "delete", "merge", "split", "event"))
            if change == "record":
                owner = rng.choice([*customers, f"n{round_}{step}"])
                rid = f"x{round_}{step}"
                w.add_record(con, owner, "store", rid, w.at(12), **_random_ids(rng, 2))
                customers += [] if owner in customers else [owner]
                records[rid] = owner
                changed.add(owner)
            elif change == "value" and records:
                rid = rng.choice(sorted(records))
                kind = rng.choice(["email", "phone_e164", "user_id", "loyalty_id"])
                value = rng.choice([*KEYS[kind], None])
                columns = ("email", "email_key") if kind == "email" else (kind,)
                for column in columns:
                    con.execute(f"UPDATE stg_records SET {column} = ? WHERE source_record_id = ?", [value, rid])
                changed.add(records[rid])
            elif change in ("move", "delete") and records:
                rid = rng.choice(sorted(records))
                changed.add(records.pop(rid))
                if change == "move":
                    records[rid] = rng.choice(customers)
                    changed.add(records[rid])
                    con.execute(
                        "UPDATE customer_source_records SET customer_id = ? WHERE source_record_id = ?",
                        [records[rid], rid],
                    )
                else:
                    con.execute("DELETE FROM stg_records WHERE source_record_id = ?", [rid])
                    con.execute("DELETE FROM customer_source_records WHERE source_record_id = ?", [rid])
            elif change == "merge" and len(customers) > 2:
                gone, kept = rng.sample(customers, 2)
                relink(con, gone, kept)
                customers.remove(gone)
                records = {r: kept if c == gone else c for r, c in records.items()}
                changed |= {gone, kept}
            elif change == "split":
                owner = rng.choice(customers)
                mine = sorted(r for r, c in records.items() if c == owner)
                if len(mine) > 1:
                    new = f"s{round_}{step}"
                    for rid in mine[: len(mine) // 2]:
                        records[rid] = new
                        con.execute("UPDATE customer_source_records SET customer_id = ? WHERE source_record_id = ?",
                                    [new, rid])  # fmt: skip
                    customers.append(new)
                    changed |= {owner, new}
            else:
                day = rng.choice((8, 19, 20 + round_, 25))
                _random_event(con, w, rng, 100 * round_ + step, day, f"b{round_}", loose)
        as_of = datetime(2026, 1, 20 + round_, 10)
        update(con, sorted(changed), as_of=as_of)
        rebuilt, values = _full_rebuild_of_a_copy(con, as_of)
        pd.testing.assert_frame_equal(state(con), rebuilt)
        pd.testing.assert_frame_equal(stored_values(con), values)

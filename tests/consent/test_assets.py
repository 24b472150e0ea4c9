"""The profile, consent and activation assets materialised against a temporary DuckDB; not ingestion."""

from __future__ import annotations

import stat
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from cdp.store import connect
from consent import enforce
from consent.export import verify_exports, write_export
from pipelines.assets import profiles as assets
from pipelines.resources import CdpStore


@pytest.fixture
def store(tmp_path: Path, w, monkeypatch) -> CdpStore:
    db = tmp_path / "cdp.duckdb"
    con = connect(db)
    w.make_world(con)
    con.close()
    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "everyone.yaml").write_text(
        "name: everyone\nwhere: true\nactivations: [email_marketing, sms_marketing]\n"
    )
    monkeypatch.setenv("CDP_SEGMENTS_DIR", str(segments))
    return CdpStore(db_path=str(db), home=str(tmp_path / "home"))


ALL = [
    assets.customer_profiles, assets.consent_events, assets.consent_state, assets.segment_activations,
    assets.profiles_one_row_per_customer, assets.profile_contacts_are_normalised,
    assets.consent_state_traces_to_ledger, assets.export_rows_all_consented,
]  # fmt: skip


def test_assets_build_profiles_consent_and_consented_activation_files(store: CdpStore, tmp_path: Path):
    result = dg.materialize(ALL, resources={"store": store})
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        assets.PROFILES_ONE_PER_CUSTOMER: True,
        assets.PROFILE_CONTACTS_NORMALISED: True,
        assets.CONSENT_STATE_TRACES_TO_LEDGER: True,
        assets.EXPORT_ROWS_ALL_CONSENTED: True,
    }
    files = sorted((tmp_path / "home" / "exports" / "everyone").iterdir())
    assert [f.name.split("-")[0] for f in files] == ["email_marketing", "sms_marketing"]
    assert pd.read_csv(files[0])["customer_id"].tolist() == ["cA", "cC", "cG"]
    assert pd.read_csv(files[1])["customer_id"].tolist() == ["cA"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    meta = result.asset_materializations_for_node("segment_activations")[0].metadata
    assert meta["exports"].value == 2 and meta["rows.everyone.email_marketing"].value == 3


def test_metadata_carries_counts_not_people(store: CdpStore):
    result = dg.materialize(ALL[:3], resources={"store": store})
    text = " ".join(
        str(v.value) for node in ("customer_profiles", "consent_events", "consent_state")
        for m in result.asset_materializations_for_node(node) for v in m.metadata.values()
    )  # fmt: skip
    assert "mailbox.com" not in text and "+44" not in text and "crmA" not in text
    # Each table's rows under Dagster's own key, which the asset catalog shows.
    con = connect(store.db_path)
    for node in ("customer_profiles", "consent_events", "consent_state"):
        (materialization,) = result.asset_materializations_for_node(node)
        assert (
            materialization.metadata["dagster/row_count"].value
            == con.execute(f"SELECT count(*) FROM {node}").fetchall()[0][0]
        )
    con.close()
    logs = " ".join(str(e.message) for e in result.all_events if e.message)
    assert "mailbox.com" not in logs and "+44" not in logs


def test_export_check_fails_when_an_exported_customer_may_no_longer_be_contacted(store: CdpStore):
    dg.materialize(ALL[:3], resources={"store": store})
    con = connect(store.db_path)
    audience = enforce.approve(con, "email_marketing")
    done = write_export(con, audience.rows, segment="x", purpose="email_marketing", out=Path(store.home) / "x.csv")
    con.execute("INSERT INTO restrictions VALUES ('cA', 'req-2', 'restriction', now(), NULL)")
    report = verify_exports(con, [done.export_id])
    con.close()
    assert report["not_allowed"] == 1 and report["problems"] == 1 and report["rows"] == 3


def test_a_failing_activation_fails_the_run_after_the_others(store: CdpStore, tmp_path: Path):
    segments = tmp_path / "segments"
    (segments / "greedy.yaml").write_text("name: greedy\nwhere: true\nfields: [email]\nactivations: [sms_marketing]\n")
    result = dg.materialize(ALL[:4], resources={"store": store}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "greedy.sms_marketing" in str(failure.event_specific_data.error.message)
    # No materialisation, so the export check will not run: the step re-checked the two files it did write.
    assert "(2 written, 0 problem(s) found re-checking them)" in str(failure.event_specific_data.error.message)
    verified = failure.event_specific_data.user_failure_data.metadata
    assert verified["verified.exports"].value == 2 and verified["verified.rows"].value == 4
    assert verified["verified.problems"].value == 0
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "home" / "exports" / "everyone").iterdir())
    assert files == ["email_marketing", "sms_marketing"]  # the other segment's exports were still written


def test_the_activation_job_checks_what_it_reads_and_a_failed_blocking_check_stops_the_export(
    store: CdpStore, tmp_path: Path
):
    from pipelines.definitions import build_definitions
    from pipelines.resources import Inbox

    dg.materialize(ALL[:3], resources={"store": store})
    resources = {"store": store, "inbox": Inbox(path=str(tmp_path / "inbox"))}
    job = build_definitions(resources).resolve_job_def("segment_activation")
    checked = job.execute_in_process(raise_on_error=False)
    assert checked.success
    assert {e.check_name for e in checked.get_asset_check_evaluations()} >= {
        assets.PROFILES_ONE_PER_CUSTOMER, assets.CONSENT_STATE_TRACES_TO_LEDGER, assets.EXPORT_ROWS_ALL_CONSENTED,
    }  # fmt: skip
    # Its run updated none of the tables it checks: each check looks at the whole table.
    assert {e.metadata["scope"].value for e in checked.get_asset_check_evaluations() if "scope" in e.metadata} == {
        "whole table"
    }
    exports = tmp_path / "home" / "exports" / "everyone"
    written = sorted(exports.iterdir())
    # A consent state that no ledger event explains: its blocking check fails, and nothing is exported.
    con = connect(store.db_path)
    con.execute("UPDATE consent_state SET event_id = 'consent:nowhere' WHERE customer_id = 'cA'")
    con.close()
    stopped = job.execute_in_process(raise_on_error=False)
    assert not stopped.success
    failed = {e.check_name for e in stopped.get_asset_check_evaluations() if not e.passed}
    assert failed == {assets.CONSENT_STATE_TRACES_TO_LEDGER}
    assert not stopped.asset_materializations_for_node("segment_activations")
    assert sorted(exports.iterdir()) == written


def _evaluate(check, store: CdpStore) -> tuple[bool, dict]:
    result = check(store=store)
    return result.passed, {k: v.value for k, v in result.metadata.items()}


def test_each_table_check_counts_what_is_wrong_in_its_table(store: CdpStore):
    dg.materialize(ALL[:3], resources={"store": store})
    passed, meta = _evaluate(assets.profiles_one_row_per_customer, store)
    assert passed and meta["duplicate_rows"] == meta["missing"] == meta["orphans"] == 0
    profiles = meta["profiles"]
    assert _evaluate(assets.profile_contacts_are_normalised, store)[0]
    assert _evaluate(assets.consent_state_traces_to_ledger, store)[0]

    con = connect(store.db_path)
    con.execute("INSERT INTO customer_profiles SELECT * FROM customer_profiles WHERE customer_id = 'cA'")
    con.execute("DELETE FROM customer_profiles WHERE customer_id = 'cC'")
    con.execute("INSERT INTO customer_profiles (customer_id) VALUES ('c-nobody'), (NULL)")
    con.execute("UPDATE customer_profiles SET email = upper(email) WHERE customer_id = 'cA'")  # both cA rows
    con.execute("UPDATE customer_profiles SET phone = '07700 900123' WHERE customer_id = 'c-nobody'")
    con.execute("UPDATE consent_state SET purpose = 'telepathy' WHERE customer_id = 'cA' AND purpose LIKE 'email%'")
    # A valid status that its event does not say: untraced too.
    con.execute(
        "UPDATE consent_state SET status = CASE status WHEN 'granted' THEN 'withdrawn' ELSE 'granted' END "
        "WHERE rowid = (SELECT min(rowid) FROM consent_state WHERE purpose <> 'telepathy')"
    )
    con.close()

    passed, meta = _evaluate(assets.profiles_one_row_per_customer, store)
    # cA twice, cC gone, two profiles of no customer (one without an id): rows, distinct ids and both sides.
    assert not passed
    assert meta == {"profiles": profiles + 2, "duplicate_rows": 2, "missing": 1, "orphans": 2, "scope": "whole table"}
    passed, meta = _evaluate(assets.profile_contacts_are_normalised, store)
    assert not passed and meta == {"emails_not_normalised": 2, "phones_not_e164": 1, "scope": "whole table"}
    passed, meta = _evaluate(assets.consent_state_traces_to_ledger, store)
    assert not passed and meta == {"untraced_rows": 2, "duplicate_rows": 0, "scope": "whole table"}

    # A second row of a customer and purpose.
    con = connect(store.db_path)
    con.execute("INSERT INTO consent_state (SELECT * FROM consent_state WHERE purpose <> 'telepathy' LIMIT 1)")
    con.close()
    passed, meta = _evaluate(assets.consent_state_traces_to_ledger, store)
    assert not passed and meta["duplicate_rows"] == 1


CHECKS = [assets.profiles_one_row_per_customer, assets.profile_contacts_are_normalised,
          assets.consent_state_traces_to_ledger]  # fmt: skip


def test_checks_after_an_incremental_update_in_their_run_look_at_the_customers_it_wrote(tmp_path: Path, w):
    db = tmp_path / "cdp.duckdb"
    con = connect(db)
    w.make_world(con)
    w.identity_run(con, "r1", w.at(20), None)
    con.close()
    store = CdpStore(db_path=str(db), home=str(tmp_path / "home"))

    def run() -> dict[str, tuple[bool, dict]]:
        result = dg.materialize(ALL[:3] + CHECKS, resources={"store": store}, raise_on_error=False)
        return {
            e.check_name: (e.passed, {k: v.value for k, v in e.metadata.items()})
            for e in result.get_asset_check_evaluations()
        }

    first = run()  # full rebuilds: the whole tables
    assert all(passed and meta["scope"] == "whole table" for passed, meta in first.values())
    assert first[assets.PROFILES_ONE_PER_CUSTOMER][1]["profiles"] == 7
    con = connect(db)
    w.add_record(con, "cH", "store", "tH", w.at(12), phone_e164=w.HOUSEHOLD, store_id="s1")
    w.identity_run(con, "r2", w.at(21), ["cH"])
    con.close()
    second = run()
    assert all(passed and meta["scope"] == "customers updated in this run" for passed, meta in second.values())
    assert second[assets.PROFILES_ONE_PER_CUSTOMER][1] == {
        "profiles": 1, "duplicate_rows": 0, "missing": 0, "orphans": 0,
        "scope": "customers updated in this run", "customers_checked": 1,
    }  # fmt: skip
    # cH and the two other carriers of the household phone
    assert second[assets.CONSENT_STATE_TRACES_TO_LEDGER][1]["customers_checked"] == 3

    # A customer the update wrote without a profile (its record is not staged): the scoped check sees it.
    con = connect(db)
    con.execute("INSERT INTO customer_source_records VALUES ('web', 'ghost', 'cZ', 'web:ghost')")
    w.identity_run(con, "r3", w.at(22), ["cZ"])
    con.close()
    passed, meta = run()[assets.PROFILES_ONE_PER_CUSTOMER]
    assert not passed and meta["missing"] == 1 and meta["scope"] == "customers updated in this run"
    # It failed, so nothing vouches for the table any more: the next run's check looks at all of it.
    con = connect(db)
    w.identity_run(con, "r4", w.at(23), [])
    con.close()
    third = run()
    passed, meta = third[assets.PROFILES_ONE_PER_CUSTOMER]
    assert not passed and meta["missing"] == 1 and meta["scope"] == "whole table" and meta["profiles"] == 8
    assert third[assets.PROFILE_CONTACTS_NORMALISED][1]["scope"] == "customers updated in this run"


def test_writing_a_table_takes_back_the_passes_of_its_checks(store: CdpStore):
    from cdp.config import Settings
    from cdp.store import verified_checks
    from consent.state import build_consent_state
    from identity.changes import invalidate
    from identity.profiles import build_customer_profiles

    dg.materialize(ALL[:3], resources={"store": store})
    for check in (assets.profiles_one_row_per_customer, assets.consent_state_traces_to_ledger):
        assert _evaluate(check, store)[0]
    con = connect(store.db_path)
    assert verified_checks(con, "consent_state") == {assets.CONSENT_STATE_TRACES_TO_LEDGER}
    build_consent_state(con)  # a rebuild (as an export's bring_to_now writes rows too)
    assert verified_checks(con, "consent_state") == frozenset()
    assert verified_checks(con, "customer_profiles") == {assets.PROFILES_ONE_PER_CUSTOMER}
    build_customer_profiles(con, Settings())
    assert verified_checks(con, "customer_profiles") == frozenset()
    assert _evaluate(assets.profiles_one_row_per_customer, store)[0]
    invalidate(con)  # an erasure: records left outside a run
    assert verified_checks(con, "customer_profiles") == frozenset()
    con.close()

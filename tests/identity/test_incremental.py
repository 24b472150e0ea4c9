"""Incremental runs: a new batch is staged and resolved for what it touches, and equals a full rebuild.

A generated world is split into a base and a batch of its newest rows (``bench.incremental.split_inbox``).
The base is ingested, staged and resolved; the batch is added and handled incrementally; the result is
compared with a full rebuild of the same store (same ids: the stable-id vote keeps them all) and with a
store built from scratch on the same files (same partition of records into customers). Consent state, built
in full after the base and updated for the customers identity changed after the batch, is compared with a
full rebuild too: the generated ledger has household phones, shared devices and mistyped withdrawals.
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from cdp.config import load_settings
from cdp.generate import generate_world, split_inbox
from cdp.ingest import Ingestor
from cdp.store import SOURCES, connect
from cdp.suppression import load_secret
from consent.ledger import sync_ledger
from consent.state import build_consent_state
from identity import changes
from identity.resolve import resolve_identities
from identity.staging import build_staging

RECORDS = "SELECT source, source_record_id, customer_id, unit_id FROM customer_source_records ORDER BY 1, 2"
CONSENT = "SELECT * EXCLUDE (computed_at) FROM consent_state ORDER BY customer_id, purpose"
PAIRS = "SELECT unit_id_l, unit_id_r, match_weight FROM identity_model_pairs ORDER BY 1, 2"
#: After every generated event (they fall in 2026), so that the ledger applies in full.
AS_OF = datetime(2027, 1, 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("incremental")
    generate_world(root / "world", customers=300, seed=5)
    split_inbox(root / "world", root / "base", root / "batch", fraction=0.05)
    return root


def _ingest(con, settings, inbox: Path) -> None:  # type: ignore[no-untyped-def]
    ingestor = Ingestor(con, load_secret(settings.secret_path), settings.default_region, lambda _m: None)
    for source in SOURCES:
        ingestor.ingest_source(inbox, source)


def _partition(frame: pd.DataFrame) -> set[frozenset[str]]:
    keys = frame["source"] + ":" + frame["source_record_id"]
    return {frozenset(group) for _, group in keys.groupby(frame["customer_id"])}


@pytest.fixture(scope="module")
def runs(world: Path) -> dict:
    """Base run, then the batch incrementally, on one store; the staged table of a full build beside it."""
    inbox = world / "inbox"
    shutil.copytree(world / "base", inbox)
    settings = load_settings(db_path=world / "cdp.duckdb", home=world / "home", inbox=inbox)
    con = connect(settings.db_path)
    _ingest(con, settings, inbox)
    build_staging(con, incremental=True)
    base = resolve_identities(con, settings)
    base_records = con.execute(RECORDS).df()
    sync_ledger(con)
    changes.pending_customers(con, "consent_state")
    build_consent_state(con, as_of=AS_OF, before_commit=lambda c: changes.mark_consumed(c, "consent_state"))
    for source in SOURCES:
        for f in (world / "batch" / source).iterdir():
            shutil.copyfile(f, inbox / source / f.name)
    _ingest(con, settings, inbox)
    build_staging(con, incremental=True)
    pending = con.execute("SELECT count(DISTINCT unit_id) FROM stg_unit_changes").fetchall()[0][0]
    staged = con.execute("SELECT * EXCLUDE (file) FROM stg_records ORDER BY source, source_record_id").df()
    incremental = resolve_identities(con, settings)
    sync_ledger(con)
    full = changes.pending_customers(con, "consent_state")
    # (Not marked consumed: the incremental run's customer_changes stay for the tests below.)
    consent = build_consent_state(con, as_of=AS_OF, customers=None if full else "_changed_customers")
    return {
        "con": con,
        "settings": settings,
        "base": base,
        "base_records": base_records,
        "pending": pending,
        "staged": staged,
        "incremental": incremental,
        "records": con.execute(RECORDS).df(),
        "consent_full": full,
        "consent": consent,
        "consent_state": con.execute(CONSENT).df(),
    }


def test_the_batch_is_staged_and_resolved_incrementally(runs: dict) -> None:
    stats = runs["incremental"]
    assert runs["base"]["mode"] == "full"
    assert stats["mode"] == "incremental" and stats["full_reason"] is None
    assert runs["pending"] == stats["changed_units"] > 0
    # Only a region around the changed units is re-resolved, not the whole store.
    assert 0 < stats["region_units"] < stats["units"] / 2
    assert runs["con"].execute("SELECT count(*) FROM stg_unit_changes").fetchall()[0][0] == 0


def test_incremental_staging_equals_a_full_staging(runs: dict, world: Path) -> None:
    con = connect(world / "staging-full.duckdb")
    _ingest(con, runs["settings"], world / "inbox")
    build_staging(con)
    full = con.execute("SELECT * EXCLUDE (file) FROM stg_records ORDER BY source, source_record_id").df()
    pd.testing.assert_frame_equal(runs["staged"], full[runs["staged"].columns])


def test_existing_customers_keep_their_records_and_ids_outside_the_region(runs: dict) -> None:
    before = runs["base_records"].set_index(["source", "source_record_id"])["customer_id"]
    after = runs["records"].set_index(["source", "source_record_id"])["customer_id"]
    kept = (after.reindex(before.index) == before).mean()
    assert kept >= 0.98
    changed = set(runs["con"].execute(
        "SELECT customer_id FROM customer_changes WHERE run_id = ?", [runs["incremental"]["run_id"]]
    ).df()["customer_id"])  # fmt: skip
    moved = set(before[after.reindex(before.index) != before]) | set(after[~after.index.isin(before.index)])
    assert moved <= changed and changes.EVERYONE not in changed


SIZES = "SELECT * FROM identity_customer_sizes ORDER BY customer_id"
#: Figures an incremental run keeps up to date rather than recounting.
FIGURES = ("customers", "units", "records", "largest_customer_units", "multi_unit_customers", "outlier_customers")


def test_consent_state_updated_for_the_changed_customers_equals_a_full_rebuild(runs: dict) -> None:
    con = runs["con"]
    assert not runs["consent_full"] and runs["consent"]["customers_recomputed"] > 0
    assert len(runs["consent_state"]) > 100
    build_consent_state(con, as_of=AS_OF)
    pd.testing.assert_frame_equal(con.execute(CONSENT).df(), runs["consent_state"])


#: The id columns incremental runs look rows up by, stored uncompressed (cdp.store.UNCOMPRESSED).
PLAIN = {
    "stg_records": {"unit_id", "source_record_id"},
    "stg_consent": {"consent_id"},
    "customer_source_records": {"source_record_id", "customer_id", "unit_id"},
    "identity_edges": {"unit_id_l", "unit_id_r"},
    "identity_units": {"unit_id"},
    "identity_unit_keys": {"unit_id", "id_value"},
    "identity_model_pairs": {"unit_id_l", "unit_id_r"},
    "identity_customer_sizes": {"customer_id"},
    "consent_events": {"event_id"},
    "consent_state": {"customer_id"},
    "consent_state_seen": {"event_id"},
    "consent_state_keys": {"customer_id", "value"},
}


def _plain(con, table: str) -> set[str]:  # type: ignore[no-untyped-def]
    """The columns of ``table`` declared uncompressed."""
    sql = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = ? AND NOT temporary", [table]).fetchall()
    return set(re.findall(r'"?(\w+)"? VARCHAR USING COMPRESSION Uncompressed', sql[0][0]))


def test_the_columns_runs_look_rows_up_by_are_stored_plain_after_an_incremental_run(runs: dict) -> None:
    con = runs["con"]
    assert {table: _plain(con, table) for table in PLAIN} == PLAIN
    con.execute("CHECKPOINT")
    stored = con.execute(
        """SELECT DISTINCT compression FROM pragma_storage_info('customer_source_records')
           WHERE column_name = 'unit_id' AND segment_type = 'VARCHAR'"""
    ).fetchall()
    assert stored == [("Uncompressed",)]


def test_a_full_rebuild_of_the_same_store_changes_nothing(runs: dict) -> None:
    con, settings = runs["con"], runs["settings"]
    sizes = con.execute(SIZES).df()
    pairs = con.execute(PAIRS).df()
    stats = resolve_identities(con, settings, full=True, prior=runs["incremental"]["model_prior"])
    assert stats["mode"] == "full"
    assert stats["new_customers"] == stats["merged"] == stats["split"] == stats["retired"] == 0
    pd.testing.assert_frame_equal(con.execute(RECORDS).df(), runs["records"])
    # The model pairs the incremental run kept (the changed units' scored by one Splink self-join of their
    # blocks, the rest as they were) are those a full run scores over every unit.
    assert len(pairs) > 0
    pd.testing.assert_frame_equal(con.execute(PAIRS).df(), pairs, check_exact=False, rtol=1e-9)
    # The per-customer sizes and the figures the incremental run derived from them are a full count's.
    pd.testing.assert_frame_equal(con.execute(SIZES).df(), sizes)
    assert {k: stats[k] for k in FIGURES} == {k: runs["incremental"][k] for k in FIGURES}


def test_a_full_run_gives_a_store_made_before_the_plain_columns(runs: dict) -> None:
    con, settings = runs["con"], runs["settings"]
    for table in ("customer_source_records", "identity_edges"):  # as a store made before declared them
        con.execute(f"CREATE OR REPLACE TEMP TABLE _kept AS FROM {table}")
        columns = ", ".join(f"{name} {kind}" for name, kind, *_ in con.execute(f"DESCRIBE {table}").fetchall())
        con.execute(f"DROP TABLE {table}")
        con.execute(f"CREATE TABLE {table} ({columns})")
        con.execute(f"INSERT INTO {table} FROM _kept")
        assert _plain(con, table) == set()
    stats = resolve_identities(con, settings, full=True, prior=runs["incremental"]["model_prior"])
    assert stats["new_customers"] == stats["merged"] == stats["split"] == stats["retired"] == 0
    assert {table: _plain(con, table) for table in PLAIN} == PLAIN
    pd.testing.assert_frame_equal(con.execute(RECORDS).df(), runs["records"])


def test_a_store_built_from_scratch_on_the_same_files_has_the_same_customers(runs: dict, world: Path) -> None:
    settings = load_settings(db_path=world / "scratch.duckdb", home=world / "home", inbox=world / "inbox")
    con = connect(settings.db_path)
    _ingest(con, settings, world / "inbox")
    build_staging(con)
    resolve_identities(con, settings, prior=runs["incremental"]["model_prior"])
    assert _partition(con.execute(RECORDS).df()) == _partition(runs["records"])


def test_after_an_erasure_the_next_run_is_full(runs: dict) -> None:
    con, settings = runs["con"], runs["settings"]
    changes.invalidate(con)
    stats = resolve_identities(con, settings)
    assert stats["mode"] == "full" and "erasure" in stats["full_reason"]
    again = resolve_identities(con, settings)  # nothing staged since: no unit to re-resolve
    assert again["mode"] == "incremental" and again["changed_units"] == again["region_units"] == 0
    assert again["new_customers"] == again["merged"] == again["split"] == again["retired"] == 0
    assert {k: again[k] for k in FIGURES} == {k: stats[k] for k in FIGURES}
    assert again["last_sequence"] == stats["last_sequence"]
    logged = con.execute("SELECT count(*) FROM customer_changes WHERE run_id = ?", [again["run_id"]]).fetchall()
    assert logged == [(0,)]


def test_a_changed_model_or_rule_makes_the_next_run_full(runs: dict, tmp_path: Path) -> None:
    from identity.model import MODEL_PATH

    con, settings = runs["con"], runs["settings"]
    assert resolve_identities(con, settings)["mode"] == "incremental"
    edited = tmp_path / MODEL_PATH.name
    edited.write_text(MODEL_PATH.read_text() + "\n")  # same parameters, another file: a reviewer's edit
    shutil.copyfile(MODEL_PATH.with_name(MODEL_PATH.stem + ".meta.json"), tmp_path / f"{MODEL_PATH.stem}.meta.json")
    stats = resolve_identities(con, settings, model_path=edited)
    assert stats["mode"] == "full" and stats["full_reason"] == "the model or the linking rules changed"


def test_an_edited_nickname_table_makes_the_next_run_full(runs: dict, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The nickname table decides which first names agree, and stored units keep the candidates it gave them:
    # a data team adding "sally,sarah" must get every customer re-resolved, not only the changed ones.
    from identity import graph

    con, settings = runs["con"], runs["settings"]
    resolve_identities(con, settings)  # the basis: full if an earlier test left another model's fingerprint
    assert resolve_identities(con, settings)["mode"] == "incremental"
    extended = tmp_path / "nicknames.csv"
    extended.write_text(graph.NICKNAMES_FILE.read_text(encoding="utf-8") + "sally,sarah\n", encoding="utf-8")
    monkeypatch.setattr(graph, "NICKNAMES_FILE", extended)
    con.execute("DROP TABLE IF EXISTS _nicknames")  # a new process loads the table afresh
    stats = resolve_identities(con, settings)
    assert stats["mode"] == "full" and stats["full_reason"] == "the model or the linking rules changed"
    assert resolve_identities(con, settings)["mode"] == "incremental"  # and then it is the basis

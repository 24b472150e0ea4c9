"""The crowd guard: a blocking rule's block holding more units than ``max_units_per_block`` pairs none of them.

One shopper's thousands of receipts under one name, or a till's default customer on every cash sale, made
Splink score and keep every pair of them: 100,000 such receipts filled the disk with 60 GB of temp files.
Here the limit is lowered to 30 so that a few dozen receipts are a crowd.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from cdp.config import load_settings
from cdp.generate import generate_world
from identity.model import PREDICTION_BLOCKING, mark_crowds
from identity.resolve import resolve_identities

LIMIT = 30
RECORDS = "SELECT source, source_record_id, customer_id FROM customer_source_records ORDER BY 1, 2"
COLUMNS = ",".join(
    ("transaction_id", "transaction_time", "store_id", "loyalty_id", "email", "phone", "first_name", "last_name",
     "postcode", "amount", "currency", "items")
)  # fmt: skip


def _receipts(path: Path, prefix: str, count: int, start: int = 0, **values: str) -> None:
    """``count`` store receipts of one shape: a loyalty card, names and postcode as ``values`` say."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS.split(","))
        for i in range(start, start + count):
            when = f"2026-11-{1 + i % 20:02d} 12:{i % 60:02d}:00"
            row = {"transaction_id": f"{prefix}{i:06d}", "transaction_time": when, "store_id": "S001",
                   "amount": "9.99", "currency": "GBP", "items": "1", **values}  # fmt: skip
            writer.writerow([row.get(column, "") for column in COLUMNS.split(",")])


HOARDER = {"loyalty_id": "LOY77777777", "first_name": "Pat", "last_name": "Hoarder", "postcode": "SW1A 1AA"}
TILL = {"first_name": "Cash", "last_name": "Customer", "postcode": "EC1A 1BB"}


def _run(stage, root: Path, extra: dict[str, dict], full: bool | None = None) -> tuple[duckdb.DuckDBPyConnection, dict]:  # type: ignore[no-untyped-def]
    """Ingest the world's inbox plus ``extra`` store files (name: receipts), stage (``stage``: the ``idstage``
    fixture), resolve."""
    inbox = root / "inbox"
    if not inbox.exists():
        shutil.copytree(root / "world", inbox)
    for name, spec in extra.items():
        if not (inbox / "store" / name).exists():
            _receipts(inbox / "store" / name, **spec)
    con, settings = stage(inbox, root, max_units_per_block=LIMIT)
    return con, resolve_identities(con, settings, full=full)


def _customers_of(con: duckdb.DuckDBPyConnection, prefix: str) -> pd.Series:
    return con.execute(
        "SELECT customer_id FROM customer_source_records WHERE source_record_id LIKE ? ORDER BY source_record_id",
        [f"{prefix}%"],
    ).df()["customer_id"]


def _partition(frame: pd.DataFrame) -> set[frozenset[str]]:
    keys = frame["source"] + ":" + frame["source_record_id"]
    return {frozenset(group) for _, group in keys.groupby(frame["customer_id"])}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crowds")
    generate_world(root / "world", customers=150, seed=11)
    return root


def test_crowded_blocks_pair_nobody_and_change_no_one_else(world: Path, tmp_path: Path, idstage) -> None:  # type: ignore[no-untyped-def]
    plain, alone = _run(idstage, _fresh(tmp_path, world, "plain"), {})
    crowd_root = _fresh(tmp_path, world, "crowd")
    con, stats = _run(
        idstage,
        crowd_root,
        {
            "store-2026-11-20.csv": {"prefix": "TXH", "count": 80, **HOARDER},
            "store-2026-11-21.csv": {"prefix": "TXC", "count": 80, **TILL},
        },
    )
    assert stats["mode"] == "full" and stats["crowded_blocks"] > 0
    # The shopper's receipts are one customer all the same: they share a loyalty card.
    assert _customers_of(con, "TXH").nunique() == 1
    # The till's default customer is nobody in particular: the name and postcode join no receipt to another.
    assert _customers_of(con, "TXC").nunique() == 80
    # And `cdp identity explain` says why two of those receipts were never compared.
    from identity.explain import explain_pair

    explained = explain_pair(con, ("store", "TXC000000"), ("store", "TXC000001"))
    assert any("max_units_per_block" in note and "never scored" in note for note in explained.notes), explained.notes
    # Everyone else is resolved as without the crowds: the prior is counted on the units of no crowded block,
    # which neither swamp it (as matches) nor dilute it (as units).
    assert stats["model_prior"] == alone["model_prior"]
    others = con.execute(
        "SELECT source, source_record_id, customer_id FROM customer_source_records "
        "WHERE source_record_id NOT LIKE 'TXH%' AND source_record_id NOT LIKE 'TXC%'"
    ).df()
    assert _partition(others) == _partition(plain.execute(RECORDS).df())


def _fresh(tmp_path: Path, world: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    shutil.copytree(world / "world", root / "world")
    return root


def test_a_block_crossing_the_limit_makes_the_run_full_and_a_crowd_growing_does_not(
    world: Path, tmp_path: Path, idstage
) -> None:  # type: ignore[no-untyped-def]
    root = _fresh(tmp_path, world, "grow")
    con, base = _run(idstage, root, {"store-2026-11-20.csv": {"prefix": "TXH", "count": LIMIT - 5, **HOARDER}})
    assert base["crowded_blocks"] == 0
    con.close()
    # Ten more receipts: the shopper's name block now holds more than the limit. The pairs of the receipts
    # already resolved must go, so the run is full.
    con, crossed = _run(
        idstage, root, {"store-2026-11-21.csv": {"prefix": "TXH", "count": 10, "start": 100, **HOARDER}}
    )
    assert (crossed["mode"], crossed["full_reason"]) == ("full", "a block crossed the crowd limit")
    assert crossed["crowded_blocks"] > 0
    con.close()
    # Ten more again: the block was crowded and stays so; the run is incremental and equals a rebuild.
    con, grown = _run(idstage, root, {"store-2026-11-22.csv": {"prefix": "TXH", "count": 10, "start": 200, **HOARDER}})
    assert grown["mode"] == "incremental"
    incremental = con.execute(RECORDS).df()
    assert _customers_of(con, "TXH").nunique() == 1
    settings = load_settings(db_path=root / "cdp.duckdb", home=root / "home", max_units_per_block=LIMIT)
    resolve_identities(con, settings, full=True, prior=grown["model_prior"])
    pd.testing.assert_frame_equal(incremental, con.execute(RECORDS).df())


def test_an_asymmetric_rule_counts_the_pairs_its_two_sides_make() -> None:
    """Forename and surname swapped: a block pairs the units named "Lee Ann" with those named "Ann Lee"."""
    swapped = PREDICTION_BLOCKING.index("l.first_name = r.last_name AND l.last_name = r.first_name")
    con = duckdb.connect()
    con.execute("CREATE TABLE u (unit_id VARCHAR, first_name VARCHAR, last_name VARCHAR)")
    rows = [(f"a{i}", "lee", "ann") for i in range(6)] + [(f"b{i}", "ann", "lee") for i in range(2)]
    con.executemany("INSERT INTO u VALUES (?, ?, ?)", rows)
    rule = (PREDICTION_BLOCKING[swapped],)
    # 6 x 2 = 12 pairs: more than 4 units' 6, fewer than 6 units' 15.
    assert mark_crowds(con, "u", "marked", limit=4, rules=rule)
    marked = con.execute("SELECT left_crowds, right_crowds, count(*) FROM marked GROUP BY ALL ORDER BY 3").fetchall()
    assert marked == [(1, 1, 8)]
    assert not mark_crowds(con, "u", "marked", limit=6, rules=rule)
    assert con.execute("SELECT max(left_crowds | right_crowds) FROM marked").fetchall() == [(0,)]


def test_training_leaves_out_the_units_of_crowded_blocks(tmp_path: Path, idstage) -> None:  # type: ignore[no-untyped-def]
    """A CRM whose form filled in one date of birth for hundreds of contacts: EM would score every pair."""
    from identity.model import train_model

    generate_world(tmp_path / "world", customers=1000, seed=3)
    crm = tmp_path / "world" / "crm" / "crm-2026-11-21.csv"
    with crm.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("crm_id", "first_name", "last_name", "email", "date_of_birth", "created_at"))
        for i in range(LIMIT * 3):
            writer.writerow((f"CX{i:05d}", f"Name{i}", f"Surname{i}", f"x{i}@gmail.com", "1985-06-15", "2026-11-01"))
    con, _ = _run(idstage, tmp_path, {})
    meta = train_model(con, tmp_path / "model.json", u_max_pairs=2e5, strict=False, block_limit=LIMIT)
    assert meta["crowded_blocks"] >= 1
    assert meta["units_in_crowds_left_out"] >= LIMIT * 3
    assert (tmp_path / "model.json").exists()


def _frame_after_rename(limit: int) -> None:
    """Five units named Joseph Smith (Jo, Joe, ...); one of them is now Jos Smyth. The frame of the changed
    unit, its crowd bits checked against ``limit``."""
    from identity.model import _changed_units_frame

    con = duckdb.connect()
    con.execute(
        """CREATE TABLE _person_units (unit_id VARCHAR, first_name VARCHAR, first_canon VARCHAR,
           first_cands VARCHAR[], last_name VARCHAR, last_cands VARCHAR[], dob DATE, email_key VARCHAR,
           email_local VARCHAR, phone_e164 VARCHAR, postcode VARCHAR, address_line1 VARCHAR, user_id VARCHAR,
           loyalty_id VARCHAR)"""
    )
    for i, first in enumerate(("jo", "joe", "joey", "joseph", "jos")):  # one nickname-folded first name
        con.execute(
            "INSERT INTO _person_units (unit_id, first_name, first_canon, last_name) VALUES (?, ?, 'joseph', ?)",
            [f"u{i}", first, "smyth" if i == 4 else "smith"],
        )
    con.execute("CREATE TABLE _changed_person AS FROM _person_units WHERE unit_id = 'u4'")
    con.execute("CREATE TABLE _changed_before AS SELECT * REPLACE ('smith' AS last_name) FROM _changed_person")
    _changed_units_frame(con, "_person_units", limit)


def test_a_block_that_shrinks_below_the_limit_is_found_though_no_block_is_crowded_now() -> None:
    """Joseph Smith's block held five units before and four now: with a limit of four it was crowded and is not.
    No block is crowded now, and the largest is at the limit: one unit more before may have been a crowd."""
    from identity.model import CrowdsChanged

    with pytest.raises(CrowdsChanged):
        _frame_after_rename(limit=4)
    _frame_after_rename(limit=5)  # five units before were no crowd either

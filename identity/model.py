"""The probabilistic person model: Splink 5 over the person-bearing identity units.

Person-bearing units are the ones with a name (CRM contacts, store transactions with names). Their
attributes -- names (nickname-folded, typos, forename and surname swapped), date of birth, email,
phone, and postcode with street address as one location comparison -- are scored pairwise by a
Fellegi-Sunter model whose u values come from random sampling and whose m values come from EM. The
trained model is a reviewed, versioned artefact: ``identity/models/person_v1.json`` (Splink's own JSON)
beside ``person_v1.meta.json`` (what it was trained on and how its parameters looked). Runs load it and
only re-measure the prior on their own data; ``cdp identity train`` rewrites it.

Two precision guards sit on top of the scores: a pair that disagrees on who it is (clearly different
first names, dates of birth more than a typo apart, two accounts in use) or whose contact details
contradict (each its own mailbox and phone, no date of birth tying them: ``cdp_contacts_disagree``) is
never linked, and a unit matched to two records that disagree with each other in either way is linked
to neither (it is ambiguous). A blocking rule pairs no units of a block more crowded than
``max_units_per_block`` (:func:`mark_crowds`).

Splink runs on its own in-memory DuckDB connection: its scratch tables never land in the store file.

>>> from identity.model import comparison_names
>>> comparison_names()
['name', 'dob', 'email', 'phone', 'location']
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from identity.graph import CONTACT_COLUMNS, WHO_COLUMNS, build_units, contacts, install_macros, who

MODEL_DIR = Path(__file__).parent / "models"
MODEL_NAME = "person_v1"
MODEL_PATH = MODEL_DIR / f"{MODEL_NAME}.json"
META_PATH = MODEL_DIR / f"{MODEL_NAME}.meta.json"

#: Columns of the Splink input table, one row per person-bearing unit.
PERSON_COLUMNS = (
    "unit_id", "first_name", "first_canon", "first_cands", "last_name", "last_cands", "dob", "email_key", "email_local",
    "phone_e164", "postcode", "address_line1", "user_id", "loyalty_id",
)  # fmt: skip


def _level(sql: str, label: str, null: bool = False) -> dict[str, Any]:
    level: dict[str, Any] = {"sql_condition": sql, "label_for_charts": label}
    if null:
        level["is_null_level"] = True
    return level


def _else() -> dict[str, Any]:
    return _level("ELSE", "All other comparisons")


JW = "jaro_winkler_similarity"

NAME = {
    "output_column_name": "name",
    "comparison_description": "forename and surname together: exact, swapped, nicknames, typos",
    "comparison_levels": [
        _level(
            "first_name_l IS NULL OR first_name_r IS NULL OR last_name_l IS NULL OR last_name_r IS NULL",
            "Null",
            null=True,
        ),
        _level("first_name_l = first_name_r AND last_name_l = last_name_r", "Exact forename and surname"),
        {
            # Set, not trained: swaps are too rare for EM or sampling to see (m and u stay as written).
            **_level(
                f"({JW}(first_name_l, last_name_r) >= 0.88 OR list_has_any(first_cands_l, last_cands_r)) "
                f"AND ({JW}(last_name_l, first_name_r) >= 0.88 OR list_has_any(last_cands_l, first_cands_r))",
                "Forename and surname swapped",
            ),
            "m_probability": 0.005,
            "u_probability": 0.00001,
            "fix_m_probability": True,
            "fix_u_probability": True,
        },
        _level("last_name_l = last_name_r AND list_has_any(first_cands_l, first_cands_r)", "Surname exact, nickname"),
        _level(
            f"(last_name_l = last_name_r AND {JW}(first_name_l, first_name_r) >= 0.88) "
            f"OR (list_has_any(first_cands_l, first_cands_r) AND {JW}(last_name_l, last_name_r) >= 0.9)",
            "One name exact, the other a typo",
        ),
        _level(
            f"{JW}(first_name_l, first_name_r) >= 0.88 AND {JW}(last_name_l, last_name_r) >= 0.88",
            "Both names close",
        ),
        _level("last_name_l = last_name_r", "Surname only"),
        _level("list_has_any(first_cands_l, first_cands_r)", "Forename only"),
        _else(),
    ],
}

DOB = {
    "output_column_name": "dob",
    "comparison_description": "date of birth: exact; one keying error, day/month swapped or year one off",
    "comparison_levels": [
        _level("dob_l IS NULL OR dob_r IS NULL", "Null", null=True),
        _level("dob_l = dob_r", "Exact"),
        _level(
            "damerau_levenshtein(strftime(dob_l, '%Y%m%d'), strftime(dob_r, '%Y%m%d')) <= 1 "
            "OR (abs(year(dob_l) - year(dob_r)) <= 1 AND ("
            "damerau_levenshtein(strftime(dob_l, '%m%d'), strftime(dob_r, '%m%d')) <= 1 "
            "OR (month(dob_l) = day(dob_r) AND day(dob_l) = month(dob_r))))",
            "One typo, day/month swapped or year one off",
        ),
        _else(),
    ],
}

EMAIL = {
    "output_column_name": "email",
    "comparison_description": "email: same mailbox only (local parts are often built from names, so fuzzy "
    "levels would count the name twice)",
    "comparison_levels": [
        _level("email_key_l IS NULL OR email_key_r IS NULL", "Null", null=True),
        _level("email_key_l = email_key_r", "Same mailbox"),
        _else(),
    ],
}

PHONE = {
    "output_column_name": "phone",
    "comparison_description": "phone (E.164): exact",
    "comparison_levels": [
        _level("phone_e164_l IS NULL OR phone_e164_r IS NULL", "Null", null=True),
        _level("phone_e164_l = phone_e164_r", "Exact"),
        _else(),
    ],
}

LOCATION = {
    "output_column_name": "location",
    "comparison_description": "postcode and first address line together (household members share both, "
    "so scoring them apart would count one fact twice); addresses are compared with street types folded",
    "comparison_levels": [
        _level(
            "(postcode_l IS NULL OR postcode_r IS NULL) AND (address_line1_l IS NULL OR address_line1_r IS NULL)",
            "Null",
            null=True,
        ),
        _level("postcode_l = postcode_r AND address_line1_l = address_line1_r", "Same postcode and address"),
        _level(
            f"postcode_l = postcode_r AND {JW}(address_line1_l, address_line1_r) >= 0.9",
            "Same postcode, address typo",
        ),
        _level("address_line1_l = address_line1_r", "Same address, postcode differs or missing"),
        _level(
            f"(postcode_l IS NULL OR postcode_r IS NULL) AND {JW}(address_line1_l, address_line1_r) >= 0.9",
            "Address typo, postcode missing",
        ),
        _level("postcode_l = postcode_r", "Same postcode only"),
        _level(
            "length(postcode_l) > 4 AND left(postcode_l, length(postcode_l) - 3) "
            "= left(postcode_r, length(postcode_r) - 3)",
            "Same postcode district",
        ),
        _else(),
    ],
}

COMPARISONS = [NAME, DOB, EMAIL, PHONE, LOCATION]

#: Rules that generate candidate pairs for prediction (a pair found by any is scored). Chosen by measured
#: pair recall and comparison counts on generated worlds (``bench/identity_bench.py --only blocking``):
#: 0.997 of true pairs among person units of a no_shared_ids world, 0.98 of an omnichannel one.
PREDICTION_BLOCKING = [
    # Same (nickname-folded) name, unless the postcodes say another area: common names ("John Smith")
    # made the plain name rule 80% of all comparisons at 1M records, for no recall.
    "l.first_canon = r.first_canon AND l.last_name = r.last_name "
    "AND (l.postcode IS NULL OR r.postcode IS NULL OR left(l.postcode, 3) = left(r.postcode, 3))",
    "l.dob = r.dob AND substr(l.last_name, 1, 1) = substr(r.last_name, 1, 1)",
    "l.dob = r.dob AND substr(l.first_name, 1, 1) = substr(r.first_name, 1, 1)",
    "l.postcode = r.postcode AND substr(l.first_name, 1, 1) = substr(r.first_name, 1, 1)",
    "l.postcode = r.postcode AND substr(l.last_name, 1, 1) = substr(r.last_name, 1, 1)",
    "l.address_line1 = r.address_line1 AND substr(l.first_name, 1, 1) = substr(r.first_name, 1, 1)",
    "l.first_name = r.last_name AND l.last_name = r.first_name",
    "l.dob = r.dob AND substr(l.first_name, 1, 1) = substr(r.last_name, 1, 1)",
    "l.postcode = r.postcode AND substr(l.first_name, 1, 1) = substr(r.last_name, 1, 1)",
    # No email or phone rule: units sharing a clean email or phone are already joined by the identifier
    # graph, and units sharing a household one are found by the name rules above.
]

#: Rules that fence EM: each leaves the comparisons it uses unestimated, so together they cover all.
EM_BLOCKING = [
    "l.dob = r.dob",
    "l.first_canon = r.first_canon AND l.last_name = r.last_name",
]
#: Training uses the units that carry a date of birth (CRM contacts): store receipts are many repeat
#: pairs of one shopper with no dob or address, and let EM learn "same shopper" instead of "same person"
#: (m(dob exact) fell to 0.12 when they were included).
TRAINING_FILTER = "dob IS NOT NULL"

#: Deterministic rules (and their assumed recall) for the prior probability that two units match.
PRIOR_RULES = [
    "l.first_name = r.first_name AND l.last_name = r.last_name AND l.dob = r.dob",
    "l.first_name = r.first_name AND l.last_name = r.last_name AND l.postcode = r.postcode",
    "l.email_key = r.email_key AND l.last_name = r.last_name",
]
PRIOR_RECALL = 0.9


def comparison_names() -> list[str]:
    return [str(c["output_column_name"]) for c in COMPARISONS]


def base_settings() -> dict[str, Any]:
    """The untrained Splink settings dictionary."""
    return {
        "link_type": "dedupe_only",
        "unique_id_column_name": "unit_id",
        "probability_two_random_records_match": 1e-4,
        "blocking_rules_to_generate_predictions": [
            {"blocking_rule": rule, "sql_dialect": "duckdb"} for rule in PREDICTION_BLOCKING
        ],
        "comparisons": COMPARISONS,
        "retain_matching_columns": True,
        "retain_intermediate_calculation_columns": True,
        "em_convergence": 0.0001,
        "max_iterations": 25,
    }


def probability_to_weight(probability: float) -> float:
    """Match weight (log2 Bayes factor incl. the prior) equivalent to a match probability."""
    probability = min(max(probability, 1e-12), 1 - 1e-12)
    return math.log2(probability / (1 - probability))


def build_person_units(
    con: duckdb.DuckDBPyConnection,
    records: str = "stg_records",
    training: bool = False,
    reuse_units: bool = False,
    units: str = "_units",
) -> int:
    """Temp table ``_person_units`` (see :data:`PERSON_COLUMNS`) from ``stg_records`` (or ``records``).

    With ``training`` only the units passing :data:`TRAINING_FILTER` are kept. With ``reuse_units`` the
    ``units`` table is used as it is: ``_units``, which the identifier graph just built, or the stored
    ``identity_units`` an incremental run reads.
    """
    if not reuse_units:
        build_units(con, records)
        units = "_units"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _person_units AS {person_units_sql(units, training)}")
    return int(con.execute("SELECT count(*) FROM _person_units").fetchall()[0][0])


def person_units_sql(units: str, training: bool = False) -> str:
    """The person-bearing units of the table ``units`` (``_units`` or ``identity_units``) as Splink reads them."""
    extra = f"AND {TRAINING_FILTER}" if training else ""
    return f"""
        SELECT unit_id, first_name, first_canon, first_cands, last_name, last_cands, dob, email_key,
               split_part(email_key, '@', 1) AS email_local, phone_e164, postcode, address_line1,
               user_id, loyalty_id
        FROM {units} WHERE (first_name IS NOT NULL OR last_name IS NOT NULL) {extra}
        """


def _person_frame(con: duckdb.DuckDBPyConnection) -> Any:
    return con.sql("SELECT * FROM _person_units ORDER BY unit_id").to_arrow_table()


@dataclass
class SplinkSession:
    """A linker over one in-memory DuckDB holding a copy of the person units."""

    linker: Any
    con: duckdb.DuckDBPyConnection
    n_units: int
    spark_view: str | None = None  # the units' temp view on a Spark session (the Spark engine)
    cleanup: Callable[[], None] | None = None  # removes the units' Parquet copy for Spark, if any

    def close(self) -> None:
        self.con.close()
        if self.spark_view is not None:
            # A Spark session outlives the run: drop the units and Splink's intermediate tables.
            self.linker.table_management.delete_tables_created_by_splink_from_db()
            self.linker._db_api.spark.catalog.dropTempView(self.spark_view)
        if self.cleanup is not None:
            self.cleanup()


def open_session(
    con: duckdb.DuckDBPyConnection,
    settings: dict[str, Any] | Path,
    threads: int = 2,
    memory_limit: str = "4GB",
    frame: Any = None,
    spark: Any = None,
    validate: bool = True,
) -> SplinkSession:
    """Copy ``_person_units`` (or the arrow table ``frame``) into a private DuckDB under a Splink linker.

    With a Spark session ``spark`` the linker runs on Splink's Spark backend instead (the settings are
    translated to Spark SQL by :func:`identity.spark.spark_model`); the private DuckDB still holds the
    units, for the precision guards. ``validate``: whether Splink checks the settings against the units
    (an incremental run skips it: its model is the one the last full run checked).
    """
    from splink import Linker

    if frame is None:
        frame = _person_frame(con)
    scratch = _scratch(_spill_directory(con), threads, memory_limit)
    scratch.register("_frame", frame)
    scratch.execute("CREATE TABLE person_units AS SELECT * FROM _frame")
    scratch.unregister("_frame")
    loaded: dict[str, Any] = json.loads(settings.read_text()) if isinstance(settings, Path) else settings
    if spark is None:
        return _duckdb_session(scratch, loaded, validate, n_units=len(frame))
    from splink import SparkAPI

    from identity.spark import spark_input, spark_model

    loaded = spark_model(loaded)
    # A view name of its own: the session may be shared by several runs or threads.
    spark_view = f"person_units_{uuid.uuid4().hex[:12]}"
    units, cleanup = spark_input(spark, frame)  # the arrow table, or Spark reading its Parquet copy
    sdf = SparkAPI(spark_session=spark).register(units, table_name=spark_view, dataset_display_name="person_units")
    linker = Linker(sdf, loaded, log_level=None, validate_settings=validate)
    return SplinkSession(linker=linker, con=scratch, n_units=len(frame), spark_view=spark_view, cleanup=cleanup)


def _spill_directory(con: duckdb.DuckDBPyConnection) -> str:
    """Where the store spills (``<db>.tmp``), for Splink's private DuckDB to spill beside it."""
    return str(con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0])


def _scratch(spill: str, threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """The private in-memory DuckDB a Splink session runs in."""
    scratch = duckdb.connect()
    scratch.execute(f"SET threads = {int(threads)}")
    scratch.execute(f"SET memory_limit = '{memory_limit}'")  # a setting, not user text
    # What Splink spills goes beside the store's own spill (``<db>.tmp``), not into the working directory.
    if spill and spill != ".tmp":
        scratch.execute("SET temp_directory = ?", [str(Path(spill) / "splink")])
    scratch.execute("SET preserve_insertion_order = false")
    return scratch


def _duckdb_session(
    scratch: duckdb.DuckDBPyConnection, settings: dict[str, Any], validate: bool, n_units: int
) -> SplinkSession:
    """A linker on Splink's DuckDB backend over the table ``person_units`` of ``scratch`` (which may be empty
    yet: the linker reads its rows when it predicts), holding ``n_units`` rows."""
    from splink import DuckDBAPI, Linker

    sdf = DuckDBAPI(connection=scratch).register("person_units", dataset_display_name="person_units")
    linker = Linker(sdf, settings, log_level=None, validate_settings=validate)
    return SplinkSession(linker=linker, con=scratch, n_units=n_units)


class _SessionInBackground:
    """A Splink session on the DuckDB backend, prepared on a thread of its own while the caller computes the
    units it will score, then handed their rows (:meth:`load`).

    Opening a session on the 1M bench's incremental run took 46 ms of Python besides copying the rows (a
    DuckDB connection 11 ms, the table registered 11 ms, the linker 24 ms); it now runs while the caller's
    DuckDB statements, which release the GIL, compute the frame: predict_changed_pairs took 429 against 462
    ms (four runs of each, alternating). ``columns`` is the frame's ``DESCRIBE``."""

    def __init__(
        self, spill: str, settings: dict[str, Any], columns: list[tuple[str, str]], threads: int, memory_limit: str
    ):
        self._result: SplinkSession | BaseException | None = None

        def work() -> None:
            try:
                scratch = _scratch(spill, threads, memory_limit)
                declared = ", ".join(f'"{name}" {kind}' for name, kind in columns)  # names and types of DESCRIBE
                scratch.execute(f"CREATE TABLE person_units ({declared})")
                install_macros(scratch)  # the veto reads them (cdp_disagree): 12 ms off the caller's thread
                self._result = _duckdb_session(scratch, settings, validate=False, n_units=0)  # rows: load()
            except BaseException as exc:  # raised again by load() in the caller's thread
                self._result = exc

        self._thread = threading.Thread(target=work, name="splink-session", daemon=True)
        self._thread.start()

    def _session(self) -> SplinkSession:
        self._thread.join()
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        return self._result

    def load(self, frame: Any) -> SplinkSession:
        """The session, with ``frame``'s rows (an arrow table with the declared columns) in ``person_units``."""
        session = self._session()
        try:
            session.con.register("_frame", frame)
            session.con.execute("INSERT INTO person_units BY NAME SELECT * FROM _frame")
            session.con.unregister("_frame")
        except BaseException:
            session.close()
            raise
        session.n_units = len(frame)
        return session

    def discard(self) -> None:
        """Close the session unused (nothing to score, or the caller gave up)."""
        with contextlib.suppress(Exception):  # its failure, if any, is of no interest any more
            self._session().close()


def load_model(path: Path = MODEL_PATH) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trained settings and their meta data; a missing model is a fixable error."""
    from cdp.errors import CdpError

    if not path.exists():
        raise CdpError(f"{path}: no trained identity model; run `cdp identity train --db PATH`")
    meta_path = path.with_name(path.stem + ".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return json.loads(path.read_text()), meta


def scaled_prior(model: dict[str, Any], meta: dict[str, Any], n_units: int) -> float:
    """The prior scaled to this run's size: matches per unit stay, pairs grow with n^2."""
    prior = float(model["probability_two_random_records_match"])
    trained_on = int(meta.get("n_units", 0) or 0)
    if trained_on > 1 and n_units > 1:
        prior = prior * (trained_on - 1) / (n_units - 1)
    return min(max(prior, 1e-12), 0.5)


def measure_prior(session: SplinkSession, model: dict[str, Any]) -> float:
    """Re-measure the share of matching pairs on this run's data; m and u stay as trained.

    The prior is a property of the data (how many duplicates each person has), not of the model: a
    CRM-only export with two contacts a person needs a larger one than the world the model was trained
    on. Deterministic rules (:data:`PRIOR_RULES`) count near-certain matches; their assumed recall scales
    the count up. When the rules find nothing, the trained prior scaled to this size is kept.

    Counted over the units in no crowded block (:func:`mark_crowds`), the ones the rules pair: one shopper's
    100,000 receipts would otherwise swamp the count as matches, or, held back, dilute it as units and
    weaken every other link. Counted in the session's DuckDB (``model``: the DuckDB settings), whatever
    engine then scores the pairs.
    """
    from splink import DuckDBAPI, Linker

    settings = session.linker._settings_obj  # Splink keeps the prior on its settings object
    session.con.execute(
        "CREATE OR REPLACE TABLE prior_units AS SELECT * FROM person_units WHERE left_crowds = 0 AND right_crowds = 0"
    )
    if int(session.con.execute("SELECT count(*) FROM prior_units").fetchall()[0][0]) >= 2:
        units = DuckDBAPI(connection=session.con).register("prior_units", dataset_display_name="prior_units")
        counter = Linker(units, model, log_level=None)
        # ValueError: more rule matches than the assumed recall allows (tiny inputs); keep the trained prior
        rules: list[Any] = list(PRIOR_RULES)
        with contextlib.suppress(ValueError):
            counter.training.estimate_probability_two_random_records_match(rules, recall=PRIOR_RECALL)
        measured = float(counter._settings_obj._probability_two_random_records_match)
        if 0 < measured < 0.5:
            settings._probability_two_random_records_match = measured
    return float(settings._probability_two_random_records_match)


def _vetoed_pairs_sql(scored_table: str) -> str:
    """Scored pairs oriented ``unit_id_l < unit_id_r`` with the precision guard's verdict: a pair that
    disagrees on who it is (clearly different first names, or dates of birth more than a typo apart), or
    whose contact details contradict (each its own mailbox and phone, no date of birth tying them), is
    never linked, however much household detail it shares."""
    return f"""
        SELECT least(p.unit_id_l, p.unit_id_r) AS unit_id_l, greatest(p.unit_id_l, p.unit_id_r) AS unit_id_r,
               p.match_weight,
               cdp_disagree({who("a")}, {who("b")})
               OR cdp_contacts_disagree({contacts("a")}, {contacts("b")}) AS vetoed
        FROM {scored_table} p
        JOIN person_units a ON a.unit_id = p.unit_id_l JOIN person_units b ON b.unit_id = p.unit_id_r
    """


#: The columns the ambiguity guard reads of a unit: its id and what cdp_disagree and cdp_contacts_disagree compare.
_GUARD_COLUMNS = tuple(dict.fromkeys(("unit_id", *WHO_COLUMNS, *CONTACT_COLUMNS)))


def ambiguous_units_sql(pairs: str, units: str, among: str | None = None) -> str:
    """Units matched (in ``pairs``) to two records that disagree with each other or whose contact details
    contradict (``units`` holds their attributes): a receipt from "James Jackson" at a house where father
    and son are both James Jackson is ambiguous and is linked to neither. ``among`` restricts the answer
    to the units of a table."""
    only = f"WHERE u IN (SELECT unit_id FROM {among})" if among else ""
    # The partners' attributes are read from ``units`` once (two joins with the whole table cost a third more).
    return f"""
        WITH nb AS MATERIALIZED (SELECT * FROM (SELECT unit_id_l AS u, unit_id_r AS v FROM {pairs}
                                                UNION ALL SELECT unit_id_r, unit_id_l FROM {pairs}) {only}),
        partners AS MATERIALIZED (SELECT {", ".join(_GUARD_COLUMNS)} FROM {units}
                                  WHERE unit_id IN (SELECT v FROM nb))
        SELECT DISTINCT x.u AS unit_id FROM nb x JOIN nb y ON x.u = y.u AND x.v < y.v
        JOIN partners a ON a.unit_id = x.v JOIN partners b ON b.unit_id = y.v
        WHERE cdp_disagree({who("a")}, {who("b")})
           OR cdp_contacts_disagree({contacts("a")}, {contacts("b")})
    """


def _prepare(model_path: Path, n_units: int, prior: float | None) -> dict[str, Any]:
    """The trained model for a prediction: its prior, and blocking rules that skip crowded blocks (the units
    carry ``left_crowds`` and ``right_crowds``, see :func:`mark_crowds`)."""
    model, meta = load_model(model_path)
    model = dict(model)
    model["blocking_rules_to_generate_predictions"] = [
        {"blocking_rule": rule, "sql_dialect": "duckdb"} for rule in guarded_rules(PREDICTION_BLOCKING)
    ]
    model["probability_two_random_records_match"] = prior if prior is not None else scaled_prior(model, meta, n_units)
    model["retain_intermediate_calculation_columns"] = False
    model["retain_matching_columns"] = False
    return model


def empty_pair_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The tables :func:`predict_pairs` writes, empty (what a run without model pairs clusters on)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _model_pairs (unit_id_l VARCHAR, unit_id_r VARCHAR, match_weight DOUBLE)")
    con.execute("CREATE OR REPLACE TEMP TABLE _ambiguous_units (unit_id VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE _model_edges AS SELECT * FROM _model_pairs")


def _insert_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: Any) -> None:
    """Append an arrow table from Splink's private connection to a temp table of ours."""
    con.register("_arrow_rows", rows)
    con.execute(f"INSERT INTO {table} SELECT * FROM _arrow_rows")  # table names of this module
    con.unregister("_arrow_rows")


def predict_pairs(
    con: duckdb.DuckDBPyConnection,
    threshold_weight: float,
    model_path: Path = MODEL_PATH,
    threads: int = 2,
    memory_limit: str = "4GB",
    reuse_units: bool = False,
    spark: Any = None,
    prior: float | None = None,
    block_limit: int = 2000,
) -> dict[str, Any]:
    """Score candidate pairs of person units; write temp tables ``_model_pairs``, ``_ambiguous_units`` and
    ``_model_edges``. No rule pairs the units of a block more crowded than ``block_limit`` units
    (:func:`mark_crowds`).

    ``_model_pairs(unit_id_l, unit_id_r, match_weight)`` holds the pairs at or above ``threshold_weight``
    that the precision guard lets through, ``_ambiguous_units(unit_id)`` the units the ambiguity guard
    holds back, and ``_model_edges`` the pairs between units that are not ambiguous. The prior is measured
    on this run's data unless ``prior`` is given. With a Spark session ``spark`` Splink scores on Spark
    (the Spark engine); the guards run in DuckDB either way. Returns counts and timings.
    """
    started = time.perf_counter()
    n_units = build_person_units(con, reuse_units=reuse_units)
    empty_pair_tables(con)
    if n_units < 2:
        return {"person_units": n_units, "model_pairs": 0, "model_seconds": 0.0}
    crowded = mark_crowds(con, "_person_units", "_person_units_crowds", block_limit)
    con.execute("CREATE OR REPLACE TEMP TABLE _person_units AS SELECT * FROM _person_units_crowds")
    con.execute("DROP TABLE _person_units_crowds")
    model = _prepare(model_path, n_units, prior)
    session = open_session(con, model, threads=threads, memory_limit=memory_limit, spark=spark)
    try:
        used_prior = float(prior) if prior is not None else measure_prior(session, model)
        scored = session.linker.inference.predict(threshold_match_weight=threshold_weight)
        scored_table = scored.physical_name  # a Splink table name, not user text
        if spark is not None:
            session.con.register(
                "_spark_scored",
                spark.sql(f"SELECT unit_id_l, unit_id_r, match_weight FROM {scored_table}").toArrow(),
            )
            scored_table = "_spark_scored"
        install_macros(session.con)
        session.con.execute(f"CREATE TABLE scored_pairs AS {_vetoed_pairs_sql(scored_table)}")
        session.con.execute(
            "CREATE TABLE kept_pairs AS SELECT unit_id_l, unit_id_r, match_weight FROM scored_pairs WHERE NOT vetoed"
        )
        pairs = session.con.sql("SELECT * FROM kept_pairs").to_arrow_table()
        ambiguous = session.con.sql(ambiguous_units_sql("kept_pairs", "person_units")).to_arrow_table()
        vetoed = int(session.con.execute("SELECT count(*) FROM scored_pairs WHERE vetoed").fetchall()[0][0])
    finally:
        session.close()
    _insert_arrow(con, "_model_pairs", pairs)
    _insert_arrow(con, "_ambiguous_units", ambiguous)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _model_edges AS SELECT * FROM _model_pairs
        WHERE unit_id_l NOT IN (SELECT unit_id FROM _ambiguous_units)
          AND unit_id_r NOT IN (SELECT unit_id FROM _ambiguous_units)
        """
    )
    edges = int(con.execute("SELECT count(*) FROM _model_edges").fetchall()[0][0])
    return {
        "person_units": n_units,
        "crowded_blocks": len(crowded),
        "model_pairs": edges,
        "model_pairs_vetoed": vetoed,
        "model_prior": used_prior,
        "model_ambiguous_units": ambiguous.num_rows,
        "model_seconds": round(time.perf_counter() - started, 2),
    }


def _equalities(rule: str) -> list[tuple[Any, Any]]:
    """The conjuncts of a blocking rule that compare an expression of the left record with one of the right
    (``l.dob = r.dob``, ``substr(l.last_name, 1, 1) = substr(r.last_name, 1, 1)``), as sqlglot nodes
    ``(left side, right side)``: together they are the rule's block key."""
    import sqlglot
    from sqlglot import exp

    def side(node: Any) -> str | None:
        tables = {c.table for c in node.find_all(exp.Column)}
        return tables.pop() if len(tables) == 1 and tables <= {"l", "r"} else None

    tree = sqlglot.parse_one(rule, read="duckdb")
    conjuncts = list(tree.flatten()) if isinstance(tree, exp.And) else [tree]
    return [
        (c.left, c.right) if side(c.left) == "l" else (c.right, c.left)
        for c in conjuncts
        if isinstance(c, exp.EQ) and {side(c.left), side(c.right)} == {"l", "r"}
    ]


#: The table name :attr:`BlockKey._rendered` reads from, replaced by the caller's (no column or function has it).
_PLACEHOLDER = "cdp_block_key_table"


def _on(node: Any, table: str) -> str:
    """SQL of a rule's expression with its columns read from ``table`` instead of ``l`` or ``r``."""
    from sqlglot import exp

    node = node.copy()
    for column in node.find_all(exp.Column):
        column.set("table", exp.to_identifier(table))
    return str(node.sql(dialect="duckdb"))


@dataclass(frozen=True)
class BlockKey:
    """A blocking rule's block key: the tuple of its equality sides, for a unit as the left record of a pair
    (side 0) and as the right one (side 1); the same for a symmetric rule."""

    equal: tuple[tuple[Any, Any], ...]

    def sql(self, side: int, table: str) -> str:
        """The key as a 64-bit hash: blocks are counted, and candidates found, on a number, not on text (a
        collision could only merge two blocks' counts or add a candidate, which the rule itself then drops)."""
        return f"hash({', '.join(self._read_from(side, table))})"

    def present(self, side: int, table: str) -> str:
        """Whether the key is complete (NULL never satisfies a blocking rule)."""
        return " AND ".join(f"{expression} IS NOT NULL" for expression in self._read_from(side, table))

    def _read_from(self, side: int, table: str) -> list[str]:
        """The SQL of each expression of ``side``, reading ``table``."""
        return [expression.replace(f"{_PLACEHOLDER}.", f"{table}.") for expression in self._rendered[side]]

    @functools.cached_property
    def _rendered(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Each side's expressions as SQL over a placeholder table, rendered once. An incremental run's crowd
        check and frame read the keys 430 times; sqlglot copied and rendered a node each time (22 ms)."""
        left, right = (tuple(_on(pair[side], _PLACEHOLDER) for pair in self.equal) for side in (0, 1))
        return left, right

    @property
    def symmetric(self) -> bool:
        return self.sql(0, "u") == self.sql(1, "u")

    @property
    def columns(self) -> frozenset[str]:
        """The names of the columns the key compares, on either side."""
        from sqlglot import exp

        return frozenset(c.name for pair in self.equal for node in pair for c in node.find_all(exp.Column))


@functools.cache
def block_keys(rules: tuple[str, ...]) -> tuple[BlockKey | None, ...]:
    """The block key of each rule; None for a rule without an equality conjunct (it pairs everyone)."""
    return tuple(BlockKey(tuple(equal)) if (equal := _equalities(rule)) else None for rule in rules)


def guarded_rules(rules: list[str], offset: int = 0) -> list[str]:
    """``rules`` that skip crowded blocks: rule ``k`` holds only for a pair whose left unit does not have bit
    ``offset + k`` of ``left_crowds`` set, nor its right unit that bit of ``right_crowds`` (:func:`mark_crowds`)."""
    return [
        f"({rule}) AND (l.left_crowds & {1 << (offset + k)}) = 0 AND (r.right_crowds & {1 << (offset + k)}) = 0"
        for k, rule in enumerate(rules)
    ]


def _block_sizes_sql(units: str, key: BlockKey, side: int) -> str:
    """``(v, n)``: the units of table ``units`` in each block of one rule (block key ``v``), as ``side``."""
    return f"SELECT {key.sql(side, 'b')} AS v, count(*) AS n FROM {units} b WHERE {key.present(side, 'b')} GROUP BY ALL"


def _pairs_limit(limit: int) -> int:
    """The pairs ``limit`` units make among themselves: more pairs than these make a crowd."""
    return int(limit) * (int(limit) - 1) // 2


def _crowded_blocks_sql(units: str, key: BlockKey, limit: int) -> str:
    """Block keys (``v``) of one rule over table ``units`` whose pairs exceed those of ``limit`` units. A
    symmetric rule pairs the n units of a block with each other; an asymmetric one (forename and surname
    swapped) pairs the units whose left key is v with those whose right key is v."""
    left, right = (_block_sizes_sql(units, key, side) for side in (0, 1))
    if key.symmetric:
        return f"SELECT v FROM ({left}) WHERE n > {int(limit)}"
    return f"SELECT v FROM ({left}) a JOIN ({right}) b USING (v) WHERE a.n * b.n > {_pairs_limit(limit)}"


def crowded_blocks(
    con: duckdb.DuckDBPyConnection, units: str, limit: int, rules: tuple[str, ...]
) -> set[tuple[int, int]]:
    """``(rule index, block key)`` of every block of table ``units`` under ``rules`` holding more pairs
    than ``limit`` units would (a handful, usually none)."""
    queries = [
        f"SELECT {k} AS rule, v FROM ({_crowded_blocks_sql(units, key, limit)})"
        for k, key in enumerate(block_keys(rules))
        if key is not None
    ]
    return {(int(k), int(v)) for k, v in con.execute(" UNION ALL ".join(queries)).fetchall()}


def _largest_blocks(con: duckdb.DuckDBPyConnection, units: str, rules: tuple[str, ...]) -> dict[tuple[int, int], int]:
    """The most units one block of table ``units`` holds, by rule index and side (:class:`BlockKey`): both
    sides of an asymmetric rule, side 0 of a symmetric one."""
    queries = [
        f"SELECT {k}, {side}, max(n) FROM ({_block_sizes_sql(units, key, side)})"
        for k, key in enumerate(block_keys(rules))
        if key is not None
        for side in ((0,) if key.symmetric else (0, 1))
    ]
    return {(int(k), int(side)): int(n or 0) for k, side, n in con.execute(" UNION ALL ".join(queries)).fetchall()}


def _crowd_free(largest: dict[tuple[int, int], int], rules: tuple[str, ...], limit: int, margin: int) -> bool:
    """Whether no block can be crowded (:func:`crowded_blocks`) when any may hold up to ``margin`` units more than
    the ``largest`` (:func:`_largest_blocks`) say."""
    for k, key in enumerate(block_keys(rules)):
        if key is None:
            continue
        left = largest[(k, 0)] + margin
        if key.symmetric and left > limit:
            return False
        if not key.symmetric and left * (largest[(k, 1)] + margin) > _pairs_limit(limit):
            return False
    return True


def mark_crowds(
    con: duckdb.DuckDBPyConnection, units: str, into: str, limit: int, rules: tuple[str, ...] | None = None
) -> set[tuple[int, int]]:
    """Temp table ``into``: every row of table ``units`` with ``left_crowds`` and ``right_crowds``, whose bit ``k`` is
    set when the unit's block under rule ``k`` (of :data:`PREDICTION_BLOCKING` then :data:`PRIOR_RULES`, or
    ``rules``), with the unit as the left or the right record, is crowded (:func:`crowded_blocks`). Returns
    the crowded blocks.

    The guard against crowds, as hub identifiers are for the graph: a block of many thousand units (one
    shopper's hundred thousand receipts under one name, a till's default customer) made Splink score and
    hold every pair of them (60 GB of temp files for 100,000). Such a block says nothing about who is who;
    its units are still scored through the other rules and linked by the keys they share.
    """
    rules = rules if rules is not None else tuple(PREDICTION_BLOCKING + PRIOR_RULES)
    crowded = crowded_blocks(con, units, limit, rules)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT u.*, {crowd_bits(crowded, rules)} FROM {units} u")
    return crowded


def crowd_bits(crowded: set[tuple[int, int]], rules: tuple[str, ...]) -> str:
    """SQL of the columns ``left_crowds`` and ``right_crowds`` of a unit ``u`` (see :func:`mark_crowds`), for the
    blocks ``crowded`` under ``rules``."""
    keys = block_keys(rules)
    bits: dict[str, list[str]] = {"left_crowds": [], "right_crowds": []}
    for k in sorted({k for k, _ in crowded}):
        key = keys[k]
        assert key is not None  # crowded blocks come from rules with a key
        values = ", ".join(str(int(v)) for rule, v in sorted(crowded) if rule == k)
        for side, column in enumerate(bits):
            bits[column].append(
                f"CASE WHEN {key.present(side, 'u')} AND {key.sql(side, 'u')} IN ({values}) THEN {1 << k} ELSE 0 END"
            )
    return ", ".join(f"({' | '.join(terms) or '0'})::BIGINT AS {column}" for column, terms in bits.items())


class CrowdsChanged(Exception):
    """A block became crowded, or stopped being crowded (see :func:`predict_changed_pairs`)."""


def _count_rows(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])  # a table of this module


@functools.cache
def candidate_filter(rules: tuple[str, ...] = tuple(PREDICTION_BLOCKING)) -> str:
    """SQL predicate over ``_person_units p`` true for every unit in a block of a unit of ``_block_probe``
    under one of ``rules``, in either role: every unit a rule can pair with a changed unit, and every unit
    counted in the size of that pair's block (:func:`crowd_sql`). A rule's equality conjuncts must all hold
    for one probe unit, so the unit's side of them is in the probe units' side of them (a tuple ``IN``). A
    rule without such a conjunct makes every unit a candidate.

    The terms are grouped by the unit's side: one ``IN`` for each of its keys, over the probe units' sides
    it meets (a key of first and last name meets both the same key and the swapped one of the probe units).
    The unit's key is hashed once, not once per term: eight terms instead of fourteen, over every person
    unit, took 29 ms against 40 ms on the 1M bench."""
    found: dict[tuple[str, str], dict[str, None]] = {}
    for key in block_keys(rules):
        if key is None:
            return "true"
        for mine in (0, 1):
            for theirs in (0, 1):
                # NULL never satisfies a blocking rule, but inside a struct DuckDB compares NULLs as equal
                probes = found.setdefault((key.present(mine, "p"), key.sql(mine, "p")), {})
                probes[f"SELECT {key.sql(theirs, 'c')} FROM _block_probe c"] = None
    terms = [
        f"({present} AND {hashed} IN ({' UNION ALL '.join(probes)}))" for (present, hashed), probes in found.items()
    ]
    return "(" + " OR ".join(terms) + ")"


@functools.cache
def prepare_in_background() -> threading.Thread:
    """Import Splink and derive :func:`candidate_filter` on a thread of its own, so that the import (a quarter
    of a second of Python) runs on the second core while the caller's DuckDB statements, which release the
    GIL, run on the first. An identity run calls it before its graph statements; the later ``import splink``
    waits for this one (imports are locked per module) and then costs nothing. Once per process: an
    incremental run that falls back to a full one does not start a second thread. A failure here surfaces
    again, with its traceback, where Splink is used."""

    def work() -> None:
        with contextlib.suppress(Exception):
            import splink  # noqa: F401  (the import is the work)

            candidate_filter()

    thread = threading.Thread(target=work, name="splink-import", daemon=True)
    thread.start()
    return thread


#: Columns of a block key that make wide blocks: a common name ("James Smith") holds hundreds of units of a
#: 1M-record world, where a date of birth, a postcode or an address narrows a block to a few.
NAME_COLUMNS = frozenset({"first_name", "first_canon", "last_name"})


def changed_unit_rules(rules: list[str]) -> list[str]:
    """``rules`` (the prediction rules, in :data:`PREDICTION_BLOCKING`'s order, crowd guards added or not)
    restricted to pairs holding a unit with ``_changed`` set, for :func:`predict_changed_pairs`.

    A rule keyed on names alone becomes two, one asking for a changed left unit and one for a changed right
    unit: DuckDB filters each side before the join and pairs the few changed units with their blocks,
    where ``l._changed OR r._changed`` is only tested on every pair of the block (a block of 885 units in the
    1M bench's batch: a million pairs joined to keep 3,749, 74 ms against 23 ms for the two). The pairs are
    the same, each found once (Splink keeps a pair for the first rule that holds). The narrow rules stay one:
    each rule is a join of its own, and doubling them all cost more than it saved."""
    out: list[str] = []
    for rule, key in zip(rules, block_keys(tuple(PREDICTION_BLOCKING)), strict=True):
        if key is not None and key.columns <= NAME_COLUMNS:
            out += [f"({rule}) AND l._changed", f"({rule}) AND r._changed"]
        else:
            out.append(f"({rule}) AND (l._changed OR r._changed)")
    return out


def _changed_units_frame(con: duckdb.DuckDBPyConnection, person_units: str, block_limit: int) -> Any:
    """The units :func:`predict_changed_pairs` scores, as an arrow table ordered by unit id: those in a block of
    a changed unit (``_changed_person`` now, ``_changed_before`` before), with ``_changed`` and their crowd bits.
    Raises :class:`CrowdsChanged` when a changed unit makes a block crowded or no longer crowded."""
    # Only units in a block of a changed unit (now or before) go to Splink: every unit a blocking rule can pair
    # with a changed unit, and every unit that counts in the size of those blocks (read off the rules).
    con.execute("CREATE OR REPLACE TEMP TABLE _block_probe AS FROM _changed_person UNION ALL FROM _changed_before")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _frame_now AS
        SELECT *, unit_id IN (SELECT unit_id FROM _changed_person) AS _changed FROM {person_units} p
        WHERE unit_id IN (SELECT unit_id FROM _changed_person) OR {candidate_filter()}
        """
    )
    # The frame as it was before: read by the crowd check alone, as a query (copying its rows took 17-22 ms).
    before = """(SELECT * FROM _frame_now WHERE unit_id NOT IN (SELECT unit_id FROM _changed_before UNION ALL
                                                             SELECT unit_id FROM _changed_person)
                 UNION ALL SELECT *, true AS _changed FROM _changed_before)"""
    rules = tuple(PREDICTION_BLOCKING)  # the prior is not measured again: its rules' crowds do not matter
    # Blocks far from the limit (all of them, usually) are not counted one by one: when the largest would be no
    # crowd even with every changed unit's previous version added to it, no block is crowded now or was before
    # (one query over the frame instead of two; the crowd check took 16 against 47 ms on the 1M bench's batch).
    margin = _count_rows(con, "_changed_before")
    if _crowd_free(_largest_blocks(con, "_frame_now", rules), rules, block_limit, margin):
        crowded: set[tuple[int, int]] = set()
    else:
        crowded = crowded_blocks(con, "_frame_now", block_limit, rules)
        if crowded != crowded_blocks(con, before, block_limit, rules):
            raise CrowdsChanged("a block crossed the crowd limit")
    # The units with their crowd bits (mark_crowds), read straight into the frame.
    frame = con.sql(f"SELECT u.*, {crowd_bits(crowded, rules)} FROM _frame_now u ORDER BY unit_id").to_arrow_table()
    for temp in ("_frame_now", "_block_probe", "_changed_before"):
        con.execute(f"DROP TABLE {temp}")
    return frame


def predict_changed_pairs(
    con: duckdb.DuckDBPyConnection,
    changed: str,
    threshold_weight: float,
    prior: float,
    model_path: Path = MODEL_PATH,
    threads: int = 2,
    memory_limit: str = "4GB",
    person_units: str = "_person_units",
    before: str | None = None,
    block_limit: int = 2000,
    now: str | None = None,
) -> dict[str, Any]:
    """Score only the pairs that involve a changed unit: temp table ``_new_model_pairs``.

    ``person_units`` (a table or view, :func:`person_units_sql`) holds every person unit, changed ones with
    their new attributes, and ``changed`` names a table of unit ids; ``before`` (the same columns) may hold
    the changed units' previous attributes, and ``now`` their attributes now (read there rather than in the
    whole of ``person_units``). Splink's ``predict_within`` scores the changed units and the
    units in their blocks with the same blocking rules (each also asking for a changed unit in the pair),
    model and ``prior`` as a full run, so the pairs are those a full run would find for these units. The
    precision guard applies as in :func:`predict_pairs`; the ambiguity guard is the caller's (it needs every
    pair). So does the crowd guard (``block_limit``, :func:`mark_crowds`): the blocks of the changed units
    are counted whole. When a changed unit makes a block crowded or no longer crowded, the pairs of units
    that did not change would differ too: :class:`CrowdsChanged` is raised, and the caller runs in full.
    """
    started = time.perf_counter()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _new_model_pairs (unit_id_l VARCHAR, unit_id_r VARCHAR, match_weight DOUBLE)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _changed_person AS SELECT * FROM {now or person_units} "
        f"WHERE unit_id IN (SELECT unit_id FROM {changed})"
    )
    n_changed = _count_rows(con, "_changed_person")
    previous = f"SELECT * FROM {before} WHERE unit_id IN (SELECT unit_id FROM {changed})" if before else None
    con.execute(f"CREATE OR REPLACE TEMP TABLE _changed_before AS {previous or 'FROM _changed_person LIMIT 0'}")
    if not n_changed and not _count_rows(con, "_changed_before"):
        return {"person_units_scored": 0, "model_pairs_new": 0, "model_seconds": 0.0}
    # The Splink session is opened while the frame below is computed (the model is the one the last full run
    # validated: the fingerprint of model and code is the same). The frame: person units, whether each
    # changed, and its crowd bits (mark_crowds).
    model = _prepare(model_path, 0, prior)  # (the prior is given: the frame's size does not scale it)
    columns = con.execute(
        f"DESCRIBE SELECT *, false AS _changed, 0::BIGINT AS left_crowds, 0::BIGINT AS right_crowds FROM {person_units}"
    ).fetchall()
    opening = _SessionInBackground(
        _spill_directory(con), model, [(name, kind) for name, kind, *_ in columns], threads, memory_limit
    )
    try:
        frame = _changed_units_frame(con, person_units, block_limit)
    except BaseException:
        opening.discard()
        raise
    if not n_changed:  # gone units: nothing to score, and no block crossed the limit
        opening.discard()
        return {"person_units_scored": 0, "model_pairs_new": 0, "model_seconds": 0.0}
    session = opening.load(frame)
    try:
        # One self-join of the frame, as a full run's: the same rules hold in the same orientation (smaller
        # unit id on the left, which the asymmetric rules need) and each rule also asks for a changed unit, so
        # only the pairs involving one are scored. (Scoring the changed units among themselves and against
        # the others both ways round took three Splink pipelines instead of one.)
        guarded = [rule["blocking_rule"] for rule in model["blocking_rules_to_generate_predictions"]]
        changed_rules = [{"blocking_rule": rule, "sql_dialect": "duckdb"} for rule in changed_unit_rules(guarded)]
        scored = session.linker.inference.predict_within(
            session.linker._db_api.register("person_units", table_name="frame_in"),
            blocking_rules_to_generate_predictions=changed_rules,
            threshold_match_weight=threshold_weight,
        )
        pairs_sql = f"(SELECT unit_id_l, unit_id_r, match_weight FROM {scored.physical_name})"
        session.con.execute(f"CREATE TABLE scored_pairs AS {_vetoed_pairs_sql(pairs_sql)}")
        pairs = session.con.sql(
            "SELECT DISTINCT unit_id_l, unit_id_r, match_weight FROM scored_pairs WHERE NOT vetoed"
        ).to_arrow_table()
        vetoed = int(session.con.execute("SELECT count(*) FROM scored_pairs WHERE vetoed").fetchall()[0][0])
    finally:
        session.close()
    _insert_arrow(con, "_new_model_pairs", pairs)
    return {
        "person_units_scored": n_changed,
        "model_pairs_new": pairs.num_rows,
        "model_pairs_vetoed": vetoed,
        "model_prior": prior,
        "model_seconds": round(time.perf_counter() - started, 2),
    }


def parameter_table(model: dict[str, Any]) -> pd.DataFrame:
    """m, u and match weight of every comparison level of a trained model (for review)."""
    rows = []
    for comparison in model["comparisons"]:
        for level in comparison["comparison_levels"]:
            if level.get("is_null_level"):
                continue
            m = level.get("m_probability")
            u = level.get("u_probability")
            weight = math.log2(m / u) if m and u else None
            rows.append(
                {
                    "comparison": comparison["output_column_name"],
                    "level": level["label_for_charts"],
                    "m": m,
                    "u": u,
                    "match_weight": weight,
                }
            )
    return pd.DataFrame(rows)


def check_parameters(model: dict[str, Any]) -> list[str]:
    """Signs of an EM collapse: true matches that mostly disagree, or exact agreement that is weak evidence.

    The collapse this guards against (LIBRARY-NOTES) learned m(dob exact) = 0.19: EM had found "same
    shopper" or "same household" instead of "same person". A sane person model has matches that rarely
    disagree outright on name, date of birth or location, and positive weight for exact agreement.
    """
    problems = []
    table = parameter_table(model)
    for comparison in ("name", "dob", "location"):
        other = table[(table.comparison == comparison) & (table.level == "All other comparisons")]
        if other.empty or other.m.isna().all():
            problems.append(f"{comparison}: no trained m value")
        elif float(other.m.iloc[0]) > 0.2:
            problems.append(f"{comparison}: m(all other) = {float(other.m.iloc[0]):.2f} > 0.2 (EM collapse?)")
    exact = table[(table.comparison == "dob") & (table.level == "Exact")]
    if not exact.empty and not exact.m.isna().all() and float(exact.m.iloc[0]) < 0.5:
        problems.append(f"dob/Exact: m = {float(exact.m.iloc[0]):.2f} < 0.5 (EM collapse?)")
    strong = table[table.level.str.startswith(("Exact", "Same mailbox", "Same postcode and address"))]
    for _, row in strong.dropna(subset=["match_weight"]).iterrows():
        if row.match_weight < 0:
            problems.append(f"{row.comparison}/{row.level}: negative weight {row.match_weight:.1f}")
    return problems


def _training_frame(stores: list[duckdb.DuckDBPyConnection]) -> Any:
    """Person units of every store, unit ids prefixed by the store's position so they stay apart."""
    import pyarrow as pa

    frames = []
    for i, store in enumerate(stores):
        build_person_units(store, training=True)
        frames.append(
            store.sql(
                "SELECT * REPLACE (? || unit_id AS unit_id) FROM _person_units ORDER BY unit_id", params=[f"s{i}/"]
            ).to_arrow_table()
        )
    return pa.concat_tables(frames)


def _without_crowds(frame: Any, limit: int) -> tuple[Any, int, int]:
    """The training units outside every block more crowded than ``limit`` under the EM and prior rules, the
    number of such blocks and of units left out. Thousands of contacts sharing one date of birth (a default
    the CRM's form filled in) would make EM score every pair of them, and teach it that a shared date of
    birth says little; they say nothing about how people's records differ."""
    scratch = duckdb.connect()
    try:
        scratch.register("_training_units", frame)
        crowded = mark_crowds(scratch, "_training_units", "_marked", limit, tuple(EM_BLOCKING + PRIOR_RULES))
        if not crowded:
            return frame, 0, 0
        kept = scratch.sql(
            "SELECT * EXCLUDE (left_crowds, right_crowds) FROM _marked "
            "WHERE left_crowds = 0 AND right_crowds = 0 ORDER BY unit_id"
        ).to_arrow_table()
        return kept, len(crowded), frame.num_rows - kept.num_rows
    finally:
        scratch.close()


def train_model(
    con: duckdb.DuckDBPyConnection,
    out_path: Path = MODEL_PATH,
    seed: int = 42,
    u_max_pairs: float = 5e6,
    threads: int = 2,
    strict: bool = True,
    also: list[duckdb.DuckDBPyConnection] | None = None,
    spark: Any = None,
    block_limit: int = 2000,
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Train on the store's person units: prior by deterministic rules, u by sampling, m by EM.

    ``also`` adds the person units of more stores (say an omnichannel world and a CRM-only one, so that
    m values are learnt from both kinds of duplicates). Writes the Splink JSON to ``out_path`` and its
    meta data beside it. With a Spark session ``spark`` Splink trains on Spark. Returns the meta data.
    Units in a block more crowded than ``block_limit`` under the EM or prior rules are left out
    (:func:`_without_crowds`). ``progress`` gets a line as each stage starts (with the time so far).
    """
    from cdp.errors import CdpError

    started = time.perf_counter()

    def stage(line: str) -> None:
        progress(f"{time.perf_counter() - started:6.1f} s  {line}")

    stores = [con, *(also or [])]
    stage(f"reading person records from {len(stores)} store(s)")
    frame, crowded, left_out = _without_crowds(_training_frame(stores), block_limit)
    n_units = frame.num_rows
    if n_units < 1000:
        raise CdpError(f"only {n_units} person records in the store; train on at least 1,000")
    stage(f"{n_units:,} person units ({left_out:,} in {crowded} crowded blocks left out)")
    session = open_session(con, base_settings(), threads=threads, memory_limit="8GB", frame=frame, spark=spark)
    try:
        training = session.linker.training
        stage(f"prior: the probability that two units match, from {len(PRIOR_RULES)} deterministic rules")
        training.estimate_probability_two_random_records_match(PRIOR_RULES, recall=PRIOR_RECALL)
        stage(f"u: comparison levels among {int(u_max_pairs):,} random pairs")
        training.estimate_u_using_random_sampling(max_pairs=u_max_pairs, seed=seed)
        for n, rule in enumerate(EM_BLOCKING, 1):
            stage(f"m: expectation maximisation {n} of {len(EM_BLOCKING)}, on pairs where {rule}")
            training.estimate_parameters_using_expectation_maximisation(rule, estimate_without_term_frequencies=True)
        model = session.linker.misc.save_model_to_json()
    finally:
        session.close()
    problems = check_parameters(model)
    if problems and strict:
        raise CdpError("trained model looks wrong, not saved: " + "; ".join(problems))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.pop("linker_uid", None)
    out_path.write_text(json.dumps(model, indent=2) + "\n")
    meta = {
        "model": out_path.stem,
        "problems": problems,
        "n_units": n_units,
        "stores": len(stores),
        "seed": seed,
        "u_max_pairs": u_max_pairs,
        "prior_rules": PRIOR_RULES,
        "prior_recall": PRIOR_RECALL,
        "em_blocking": EM_BLOCKING,
        "block_limit": block_limit,
        "crowded_blocks": crowded,
        "units_in_crowds_left_out": left_out,
        "train_seconds": round(time.perf_counter() - started, 1),
        "parameters": parameter_table(model).round(6).to_dict(orient="records"),
    }
    out_path.with_name(out_path.stem + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def score_units(
    con: duckdb.DuckDBPyConnection,
    unit_a: str,
    unit_b: str,
    chart_path: Path | None = None,
    model_path: Path = MODEL_PATH,
    population: int | None = None,
    prior: float | None = None,
) -> dict[str, Any] | None:
    """Splink's verdict on two units: total match weight and the weight of every comparison.

    Returns ``None`` when either unit bears no person attributes (no name). With ``chart_path`` the
    waterfall chart is saved there as a self-contained HTML file. The prior is ``prior`` when given (the
    one the last run measured), else the trained one scaled to ``population`` person units (default:
    those in ``stg_records``).
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _explain_records AS SELECT * FROM stg_records WHERE unit_id IN (?, ?)",
        [unit_a, unit_b],
    )
    if build_person_units(con, "_explain_records") < 2:
        return None
    if population is None:
        population = int(
            con.execute(
                "SELECT count(DISTINCT unit_id) FROM stg_records WHERE first_name IS NOT NULL OR last_name IS NOT NULL"
            ).fetchall()[0][0]
        )
    trained, meta = load_model(model_path)
    trained = dict(trained)
    trained["probability_two_random_records_match"] = prior or scaled_prior(trained, meta, population)
    session = open_session(con, trained)
    try:
        # Typed one-row tables, not dicts: a dict's missing value has no type for Splink's SQL (year(NULL)).
        sides = []
        for side, unit in (("explain_l", unit_a), ("explain_r", unit_b)):
            session.con.execute(f"CREATE TABLE {side} AS SELECT * FROM person_units WHERE unit_id = ?", [unit])
            sides.append(session.linker._db_api.register(side))  # Splink's registry of input tables
        scored = session.linker.inference.score_pair(sides[0], sides[1]).as_record_list()
        result = {
            "match_weight": float(scored[0]["match_weight"]),
            "match_probability": float(scored[0]["match_probability"]),
            "comparisons": {c["output_column_name"]: _level_result(c, scored[0]) for c in trained["comparisons"]},
        }
        if chart_path is not None:
            chart = session.linker.visualisations.waterfall_chart(scored, filter_nulls=False)
            chart.save(str(chart_path), inline=True)
        return result
    finally:
        session.close()


def _level_result(comparison: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """The label and weight of the level a scored pair fell in (gamma counts down to 0 = ELSE)."""
    name = comparison["output_column_name"]
    gamma = scored.get(f"gamma_{name}")
    levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
    if gamma is None or gamma < 0:
        return {"label": "Null", "weight": None}
    weight = scored.get(f"mw_{name}")
    return {"label": levels[len(levels) - 1 - int(gamma)]["label_for_charts"],
            "weight": None if weight is None else float(weight)}  # fmt: skip

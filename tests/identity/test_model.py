"""The saved Splink model: it loads, its parameters look like a person model, and it scores known pairs.

Uses identity/models/person_v1.json as committed; does not retrain (that is `cdp identity train`).
"""

from __future__ import annotations

import json

from identity.model import MODEL_PATH, check_parameters, probability_to_weight, score_units

THRESHOLD = probability_to_weight(0.99)


def test_saved_model_is_a_trained_person_model():
    model = json.loads(MODEL_PATH.read_text())
    assert [c["output_column_name"] for c in model["comparisons"]] == ["name", "dob", "email", "phone", "location"]
    assert check_parameters(model) == []


def test_saved_model_scores_a_duplicate_above_and_a_neighbour_below_threshold(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", first_name="katherine", last_name="jones", date_of_birth="1961-05-10",
                 postcode="SW1A1AA", address_line1="12 high street"),
            rec_("crm", "c2", first_name="kathy", last_name="jones", date_of_birth="1961-10-05",
                 postcode="SW1A1AA", address_line1="12 high st"),  # nickname, day/month swapped, abbreviation
            rec_("crm", "c3", first_name="robert", last_name="jones", date_of_birth="1990-02-03",
                 postcode="SW1A1AA", address_line1="12 high street"),  # same house, another person
        ]
    )  # fmt: skip
    # scored as in a store of the size the model was trained on (the prior depends on the population)
    population = json.loads(MODEL_PATH.with_name("person_v1.meta.json").read_text())["n_units"]
    same = score_units(idcon, "crm:c1", "crm:c2", population=population)
    other = score_units(idcon, "crm:c1", "crm:c3", population=population)
    assert same is not None and other is not None
    assert same["match_weight"] > THRESHOLD
    assert other["match_weight"] < THRESHOLD
    assert same["comparisons"]["name"]["label"] == "Surname exact, nickname"
    assert same["comparisons"]["location"]["label"] == "Same postcode and address"


def test_changed_unit_rules_find_the_pairs_of_a_changed_unit_once_whatever_the_rule_form():
    """Name rules are split in two (changed left unit, changed right unit) so that DuckDB filters before
    joining; the pairs they find with the others are those of the single ``l._changed OR r._changed`` form."""
    import duckdb

    from identity.model import PREDICTION_BLOCKING, changed_unit_rules

    rules = list(PREDICTION_BLOCKING)
    split = changed_unit_rules(rules)
    assert len(split) == len(rules) + 2  # the two name rules: same name, forename and surname swapped
    assert [r for r in split if r.endswith("AND l._changed")] == [f"({rules[0]}) AND l._changed",
                                                                  f"({rules[6]}) AND l._changed"]  # fmt: skip
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE u AS SELECT * FROM (VALUES
            ('a', 'james', 'james', 'smith', DATE '1980-01-02', 'SW1A1AA', '1 high st', true),
            ('b', 'jim', 'james', 'smith', NULL, 'SW1A2BB', NULL, false),
            ('c', 'james', 'james', 'smith', DATE '1980-01-02', NULL, NULL, false),
            ('d', 'smith', 'smith', 'james', NULL, 'SW1A1AA', '1 high st', true),
            ('e', 'jimmy', 'james', 'smith', NULL, 'M1 1AA', NULL, true),
            ('f', 'james', 'james', 'smith', NULL, 'M1 1AB', NULL, false)
        ) t(unit_id, first_name, first_canon, last_name, dob, postcode, address_line1, _changed)"""
    )

    def pairs(form: list[str]) -> list[tuple[str, str]]:
        join = "SELECT l.unit_id, r.unit_id FROM u l JOIN u r ON ({}) WHERE l.unit_id < r.unit_id"
        found = [con.execute(join.format(rule)).fetchall() for rule in form]
        return sorted({pair for rows in found for pair in rows})

    expected = pairs([f"({rule}) AND (l._changed OR r._changed)" for rule in rules])
    assert pairs(split) == expected
    assert ("a", "c") in expected and ("a", "d") in expected and ("b", "f") not in expected  # b, f unchanged


def test_a_session_opened_in_the_background_takes_its_rows_after_and_reports_its_failures(tmp_path):
    """predict_changed_pairs opens its Splink session on a thread while it computes the frame; the rows come
    after, and a failure on that thread is raised where the session is taken, not lost with the thread."""
    import duckdb
    import pyarrow as pa
    import pytest

    from identity.model import _prepare, _SessionInBackground

    model = _prepare(MODEL_PATH, 0, 0.001)
    columns = [("unit_id", "VARCHAR"), ("first_name", "VARCHAR"), ("_changed", "BOOLEAN")]
    opening = _SessionInBackground(str(tmp_path), model, columns, threads=1, memory_limit="1GB")
    frame = pa.table({"first_name": ["ann", "bo"], "unit_id": ["u1", "u2"], "_changed": [True, False]})
    session = opening.load(frame)
    try:
        assert session.n_units == 2
        assert session.con.execute("SELECT unit_id, _changed FROM person_units ORDER BY 1").fetchall() == [
            ("u1", True), ("u2", False),
        ]  # fmt: skip
        assert session.linker._settings_obj._probability_two_random_records_match == 0.001
    finally:
        session.close()

    failing = _SessionInBackground(str(tmp_path), model, columns, threads=1, memory_limit="not an amount")
    with pytest.raises(duckdb.Error, match="(?i)memory"):
        failing.load(frame)
    failing.discard()  # nothing left to close: no second error

    wrong = _SessionInBackground(str(tmp_path), model, columns, threads=1, memory_limit="1GB")
    with pytest.raises(duckdb.Error, match="missing_column"):
        wrong.load(pa.table({"missing_column": [1]}))

"""Identifier-graph rules that decide whether two copies of one person "disagree": dates of birth a day
apart or swapped with a typo, swapped names with a keying error, and nickname folding that does not
join Mandy to Andrew. Not Splink or clustering."""

from __future__ import annotations

import duckdb
import pytest

from identity.graph import build_graph, build_units, install_macros

LIMITS = {"user_id": 100, "loyalty_id": 100, "email_key": 100, "phone_e164": 100, "crm_id": 100}


@pytest.mark.parametrize(
    ("a", "b", "near"),
    [
        ("1980-09-19", "1980-09-20", True),  # a day apart, two digits differ
        ("1980-12-31", "1981-01-01", True),
        ("1971-11-03", "1971-03-12", True),  # day and month swapped, plus one keying error
        ("1971-11-03", "1971-03-11", True),
        ("1980-09-19", "1980-09-22", False),
        ("1971-11-03", "1971-04-12", False),
        ("1960-01-05", "1965-07-05", False),
    ],
)
def test_near_dates_of_birth(a, b, near):
    con = duckdb.connect()
    install_macros(con)
    assert con.execute("SELECT cdp_near_dob(?::DATE, ?::DATE)", [a, b]).fetchall()[0][0] is near


def _cands(con: duckdb.DuckDBPyConnection, name: str) -> set[str]:
    return set(con.execute("SELECT cands FROM _name_candidates WHERE name = ?", [name]).fetchall()[0][0])


def test_nickname_candidates_tolerate_a_typo_past_the_first_letter(idcon, stg, rec_):
    names = ["mandy", "andrew", "jak", "jon", "john", "ali", "alex", "katthy"]
    stg([rec_("crm", f"c{i}", first_name=n, last_name="x") for i, n in enumerate(names)])
    build_units(idcon)
    assert "andrew" not in _cands(idcon, "mandy") and "amanda" in _cands(idcon, "mandy")
    assert "john" in _cands(idcon, "jak") and "john" in _cands(idcon, "jon")
    assert not _cands(idcon, "ali") & _cands(idcon, "alex")
    assert "katherine" in _cands(idcon, "katthy")


def test_a_name_on_the_nickname_list_is_not_read_as_a_typo_of_another_short_form(idcon, stg, rec_):
    # John is not a mistyped Jon (Jonathan), Nick not a mistyped Nicky (Nicola); a short form one key from
    # a full name still folds to it (Jon -> John), and names off the list fold as before (Jak -> John).
    names = ["john", "nick", "jon", "jak", "nicola"]
    stg([rec_("crm", f"c{i}", first_name=n, last_name="x") for i, n in enumerate(names)])
    build_units(idcon)
    assert "jonathan" not in _cands(idcon, "john") and "nicola" not in _cands(idcon, "nick")
    assert not _cands(idcon, "nick") & _cands(idcon, "nicola")
    assert "john" in _cands(idcon, "jon") and "john" in _cands(idcon, "jak")


def test_one_person_typed_four_ways_shares_keys_without_conflict(idcon, stg, rec_):
    # dates of birth a day apart; forename and surname swapped with a nickname; and a swap with a typo
    stg(
        [
            rec_("crm", "c1", first_name="john", last_name="baker", date_of_birth="1979-11-19", loyalty_id="L5"),
            rec_("crm", "c2", first_name="baker", last_name="jack", date_of_birth="1979-11-20", loyalty_id="L5"),
            rec_("crm", "c3", first_name="emma", last_name="williams", date_of_birth="1983-12-01", user_id="u9"),
            rec_("crm", "c4", first_name="williams", last_name="emia", date_of_birth="1983-12-11", user_id="u9"),
        ]
    )
    build_graph(idcon, LIMITS)
    got = set(idcon.execute("SELECT unit_id_l, unit_id_r, rule FROM _graph_edges").fetchall())
    assert ("crm:c1", "crm:c2", "shared_key") in got
    assert ("crm:c3", "crm:c4", "shared_key") in got


def test_mandy_and_andrew_on_one_card_still_conflict(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", first_name="andrew", last_name="johnson", date_of_birth="1972-10-13", loyalty_id="L7"),
            rec_("crm", "c2", first_name="mandy", last_name="johnson", date_of_birth="2007-09-29", loyalty_id="L7"),
        ]
    )
    build_graph(idcon, LIMITS)
    assert idcon.execute("SELECT verdict FROM _key_groups").fetchall() == [("conflict",)]
    assert not idcon.execute("SELECT * FROM _graph_edges").fetchall()

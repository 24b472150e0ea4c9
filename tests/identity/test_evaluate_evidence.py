"""Recall over connectable pairs: the generator's evidence groups and the evaluation that counts by them.

Covers ``cdp.generate._connectable`` (evidence groups from hand-made parts and from a small generated
world) and ``identity.evaluate`` (pairs inside a group, the older per-unit figure, truth files with and
without ``evidence_group``). Does not run identity resolution.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from cdp.generate import _EMAIL, _K, _LOYALTY, _PHONE, _connectable, _fuzzy_keys, _Part, generate_world
from identity.evaluate import evaluate, evaluate_units


def _part(persons: list[int], units: list[int]) -> _Part:
    n = len(persons)
    return _Part(pd.DataFrame(index=np.arange(n)), np.array(persons), np.array(units, dtype=np.int64), np.zeros(n))


def _groups(parts: dict[str, _Part]) -> dict[str, list[tuple[int, int]]]:
    _, groups = _connectable(parts)
    return {s: list(zip(g["group"].tolist(), g["size"].tolist(), strict=True)) for s, g in groups.items()}


def test_two_evidence_groups_of_one_person_stay_apart():
    # person 0: contacts 0 and 1 share an email, contacts 2 and 3 a loyalty card, nothing joins the pairs
    crm = _part([0, 0, 0, 0], [0, 1, 2, 3])
    crm.keys(np.array([0, 1]), _EMAIL * _K + np.array([5, 5]))
    crm.keys(np.array([2, 3]), _LOYALTY * _K + np.array([0, 0]))
    assert _groups({"crm": crm})["crm"] == [(1, 2), (1, 2), (2, 2), (2, 2)]


def test_evidence_is_transitive_and_keys_are_per_unit():
    # contact 0 and the cookie share an email (on the cookie's first event); the cookie and contact 1 a
    # phone (on its second event): one group of three; contact 2 shares nothing
    crm = _part([0, 0, 0], [0, 1, 2])
    crm.keys(np.array([0]), _EMAIL * _K + np.array([7]))
    crm.keys(np.array([1]), _PHONE * _K + np.array([9]))
    web = _part([0, 0, 0], [0, 0, 0])  # three events of one cookie
    web.keys(np.array([0]), _EMAIL * _K + np.array([7]))
    web.keys(np.array([2]), _PHONE * _K + np.array([9]))
    groups = _groups({"crm": crm, "web": web})
    assert groups["crm"] == [(1, 3), (1, 3), (2, 1)]
    assert groups["web"] == [(1, 3)] * 3


def test_a_value_two_people_carry_connects_nothing():
    # a household landline written on two contacts of person 0 and one of person 1
    crm = _part([0, 0, 1], [0, 1, 2])
    crm.keys(np.array([0, 1, 2]), _PHONE * _K + np.array([3, 3, 3]))
    assert _groups({"crm": crm})["crm"] == [(1, 1), (2, 1), (1, 1)]


def test_fuzzy_evidence_needs_two_attributes_beyond_the_first_name():
    # Emma (person 0): 0 a contact under her former surname with her date of birth at home; 1 a contact
    # under her surname with her date of birth, no address; 2 a receipt with her surname and postcode; 3 a
    # contact under the former surname at a former postcode; 4 a receipt with a name and no postcode
    crm = _part([0] * 5, [0, 1, 2, 3, 4])
    dob, home, former = "1980-01-02", "AB1 2CD", "AB1 9ZZ"
    _fuzzy_keys(crm, np.arange(5), first=["Emma"] * 5, surname=["Hale", "Bell", "Bell", "Hale", "Bell"],
                dob=[dob, dob, None, None, None], postcode=[home, None, home, former, None],
                address=["home 7", None, None, None, None])  # fmt: skip
    # 0-1: date of birth only (surnames differ); 0-2: postcode only; 1-2: surname only; 0-3: surname only
    assert [g for g, _ in _groups({"crm": crm})["crm"]] == [1, 2, 3, 4, 5]
    # contact 1 with the home postcode: agrees with 2 on surname and postcode, with 0 on birth and postcode
    _fuzzy_keys(crm, np.array([1]), first=["Emma"], surname=["Bell"], dob=[dob], postcode=[home], address=[None])
    assert _groups({"crm": crm})["crm"] == [(1, 3), (1, 3), (1, 3), (2, 1), (3, 1)]


def test_a_name_and_postcode_two_household_members_share_connects_nothing():
    # Christopher (0) and Christine (1) Taylor at one postcode: "Chris Taylor" fits both, so receipts
    # with a name and postcode connect to neither; Christine's contacts still agree on more
    store = _part([0, 1, 1], [0, 1, 2])
    _fuzzy_keys(store, np.arange(3), first=["Christopher", "Christine", "Christine"], surname=["Taylor"] * 3,
                dob=[None] * 3, postcode=["G1 7GJ"] * 3, address=[None] * 3)  # fmt: skip
    crm = _part([0, 1], [0, 1])
    _fuzzy_keys(crm, np.arange(2), first=["Christopher", "Christine"], surname=["Taylor"] * 2,
                dob=["1975-01-18", "1948-03-12"], postcode=["G1 7GJ"] * 2, address=["home 1"] * 2)  # fmt: skip
    groups = _groups({"crm": crm, "store": store})
    assert all(size == 1 for _, size in groups["store"])
    # Oliver and Hannah, twins: one surname, birthday and postcode, names nobody writes the same way
    twins = _part([0, 0, 1, 1], [0, 1, 2, 3])
    _fuzzy_keys(twins, np.arange(4), first=["Oliver", "Oliver", "Hannah", "Hannah"], surname=["Hall"] * 4,
                dob=["1990-05-05"] * 4, postcode=["E1 1AA"] * 4, address=[None] * 4)  # fmt: skip
    assert _groups({"crm": twins})["crm"] == [(1, 2)] * 4


@pytest.fixture(scope="module")
def small_truth(tmp_path_factory):
    out = tmp_path_factory.mktemp("evidence") / "inbox"
    generate_world(out, customers=150, seed=11)
    return pd.read_csv(str(out) + "-truth/records.csv", dtype=str)


def test_generated_truth_has_one_group_per_unit_within_its_person(small_truth):
    per_unit = small_truth.groupby("unit_id").agg(
        groups=("evidence_group", "nunique"), group=("evidence_group", "first"), person=("person_id", "first"),
        connectable=("connectable", "first"),
    )  # fmt: skip
    assert (per_unit["groups"] == 1).all()
    assert (per_unit["group"].str.split("/").str[0] == per_unit["person"]).all()
    size = per_unit.groupby("group")["person"].transform("size")
    assert ((size >= 2) == (per_unit["connectable"] == "true")).all()
    # a person with two groups of 2+ units exists: the reason pairs, not units, are counted
    multi = per_unit[size >= 2].groupby("person")["group"].nunique()
    assert (multi >= 2).any()


def test_recall_counts_only_pairs_inside_an_evidence_group():
    con = duckdb.connect()
    # p1: group 1 {a, b} linked, group 2 {c, d} linked to each other but not to group 1; e alone
    con.execute(
        """CREATE TABLE u AS SELECT * FROM (VALUES
            ('a', 'c1', 'p1', true, 'p1/1'), ('b', 'c1', 'p1', true, 'p1/1'),
            ('c', 'c2', 'p1', true, 'p1/2'), ('d', 'c2', 'p1', true, 'p1/2'),
            ('e', 'c3', 'p1', false, 'p1/3'), ('f', 'c4', 'p2', true, 'p2/1'), ('g', 'c5', 'p2', true, 'p2/1')
        ) t(unit_id, customer_id, person_id, connectable, evidence_group)"""
    )
    m = evaluate_units(con, "u")
    assert (m["connectable_pairs"], m["connectable_pairs_linked"]) == (3, 2)
    assert m["recall_connectable"] == pytest.approx(2 / 3)
    # the looser figure counts a-c, a-d, b-c, b-d too: 6 + 1 pairs, 2 linked
    assert (m["connectable_unit_pairs"], m["recall_connectable_units"]) == (7, pytest.approx(2 / 7))
    assert (m["evidence_groups"], m["split_evidence_groups"]) == (3, 1)


@pytest.mark.parametrize("with_groups", [True, False])
def test_evaluate_reads_evidence_groups_from_the_truth_file(tmp_path, with_groups):
    con = duckdb.connect()
    con.execute("CREATE TABLE customer_source_records (source VARCHAR, source_record_id VARCHAR, "
                "customer_id VARCHAR, unit_id VARCHAR)")  # fmt: skip
    con.execute(
        """INSERT INTO customer_source_records VALUES
           ('crm', 'c1', 'X', 'crm:c1'), ('crm', 'c2', 'X', 'crm:c2'), ('crm', 'c3', 'Y', 'crm:c3'),
           ('crm', 'c4', 'Y', 'crm:c4')"""
    )
    header = "source,source_record_id,unit_id,person_id,connectable" + (",evidence_group" if with_groups else "")
    rows = [("c1", "p1/1"), ("c2", "p1/1"), ("c3", "p1/2"), ("c4", "p1/2")]
    body = "".join(f"crm,{r},crm:{r},p1,true" + (f",{g}" if with_groups else "") + "\n" for r, g in rows)
    truth = tmp_path / "records.csv"
    truth.write_text(header + "\n" + body)
    m = evaluate(con, truth)
    # two groups each linked: recall 1 over connectable pairs; without groups all 6 pairs count (2 linked)
    assert m["recall_connectable"] == pytest.approx(1.0 if with_groups else 2 / 6)
    assert m["recall_connectable_units"] == pytest.approx(2 / 6)

"""The identifier graph: placeholder and hub guards, edges with their evidence; not Splink or clustering."""

from __future__ import annotations

import pytest

from identity.graph import build_graph, is_placeholder

LIMITS = {"user_id": 100, "loyalty_id": 100, "email_key": 3, "phone_e164": 100, "crm_id": 100}


def edges(con) -> set[tuple[str, str, str, str]]:
    return set(con.execute("SELECT unit_id_l, unit_id_r, evidence, rule FROM _graph_edges").fetchall())


@pytest.mark.parametrize(
    ("key_type", "value", "expected"),
    [
        ("user_id", "null", True), ("user_id", "-1", True), ("loyalty_id", "0000000", True),
        ("user_id", "  ", True), ("loyalty_id", "123456", True), ("email_key", "test@shop.com", True),
        ("email_key", "anna@example.com", True), ("email_key", "noreply@brand.co.uk", True),
        ("email_key", "xxx@gmail.com", True), ("phone_e164", "+447000000000", True),
        ("user_id", "u-81723", False), ("email_key", "anna.lee@gmail.com", False),
        ("phone_e164", "+447700900123", False), ("loyalty_id", "L100234", False),
    ],
)  # fmt: skip
def test_placeholders_are_never_keys(key_type, value, expected):
    assert is_placeholder(key_type, value) is expected


def test_shared_keys_link_units_and_record_type_and_rule_not_value(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", user_id="u1", loyalty_id="L1", email_key="ann@x.com", first_name="ann"),
            rec_("store", "t1", loyalty_id="L1", first_name="ann"),
            rec_("web", "e1", anonymous_id="ck1", user_id="u1"),
            rec_("web", "e2", anonymous_id="ck1"),
            rec_("app", "a1", device_id="d1", email_key="ann@x.com"),
            rec_("store", "t2", loyalty_id="-1"),  # placeholder: links nobody
            rec_("store", "t3", loyalty_id="-1"),
        ],
    )
    stats = build_graph(idcon, LIMITS)
    got = edges(idcon)
    assert ("crm:c1", "store:t1", "loyalty_id", "shared_key") in got
    assert ("crm:c1", "web:ck1", "user_id", "shared_key") in got
    assert ("app:d1", "crm:c1", "email_key", "shared_key") in got
    assert not any("store:t2" in (a, b) for a, b, _, _ in got)
    assert stats["placeholder_values.loyalty_id"] == 1
    # evidence is the key type; the raw value is nowhere in the edge table
    flat = {v for row in idcon.execute("SELECT * FROM _graph_edges").fetchall() for v in row}
    assert not flat & {"u1", "L1", "ann@x.com"}


def test_household_phone_with_different_people_is_not_a_hard_link(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", phone_e164="+441632960001", first_name="john", date_of_birth="1970-01-01"),
            rec_("crm", "c2", phone_e164="+441632960001", first_name="mary", date_of_birth="1972-05-05"),
            rec_("store", "t1", phone_e164="+441632960001", first_name="john"),
            rec_("store", "t2", phone_e164="+441632960001"),  # nameless: ambiguous, stays alone
        ],
    )
    stats = build_graph(idcon, LIMITS)
    got = edges(idcon)
    assert stats["hub_keys_conflict.phone_e164"] == 1
    linked = {(a, b) for a, b, _, _ in got}
    assert ("crm:c1", "crm:c2") not in linked
    assert not any("store:t2" in pair for pair in linked)
    assert ("crm:c1", "store:t1", "phone_e164", "shared_key_same_first_name") in got


def test_an_initial_is_the_start_of_a_name_not_another_name(idcon, stg, rec_):
    """A card receipt in "J Taylor"'s name with John Taylor's email is John's; one in "M Taylor"'s is not."""
    stg(
        [
            rec_("crm", "c1", email_key="john.taylor@x.com", first_name="john", last_name="taylor"),
            rec_("store", "t1", email_key="john.taylor@x.com", first_name="j", last_name="taylor"),
            rec_("crm", "c2", phone_e164="+441632960002", first_name="john", last_name="taylor"),
            rec_("store", "t2", phone_e164="+441632960002", first_name="m", last_name="taylor"),
        ],
    )
    build_graph(idcon, LIMITS)
    linked = {(a, b) for a, b, _, _ in edges(idcon)}
    assert ("crm:c1", "store:t1") in linked
    assert ("crm:c2", "store:t2") not in linked


def test_dob_typo_is_not_a_conflict_but_distant_dob_is(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", email_key="pat@x.com", first_name="pat", date_of_birth="1980-03-12"),
            rec_("crm", "c2", email_key="pat@x.com", first_name="pat", date_of_birth="1980-12-03"),  # swapped
            rec_("crm", "c3", loyalty_id="L9", first_name="sam", date_of_birth="1990-01-01"),
            rec_("crm", "c4", loyalty_id="L9", first_name="sam", date_of_birth="1962-07-30"),
        ],
    )
    build_graph(idcon, LIMITS)
    linked = {(a, b) for a, b, _, _ in edges(idcon)}
    assert ("crm:c1", "crm:c2") in linked
    assert ("crm:c3", "crm:c4") not in linked


def test_per_type_limit_makes_a_hub(idcon, stg, rec_):
    rows = [rec_("store", f"t{i}", email_key="shop@brand.com") for i in range(4)]
    stg(rows)
    stats = build_graph(idcon, LIMITS)
    assert stats["hub_keys_over_limit.email_key"] == 1
    assert edges(idcon) == set()
    stats = build_graph(idcon, {**LIMITS, "email_key": 10})
    assert stats["edges.email_key"] == 3


def test_shared_tablet_keeps_only_a_majority_account(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", user_id="mum", first_name="ann"),
            rec_("crm", "c2", user_id="kid", first_name="tom"),
            *[rec_("app", f"a{i}", device_id="tab", user_id="mum") for i in range(3)],
            rec_("app", "a9", device_id="tab", user_id="kid"),
            rec_("app", "b1", device_id="tab2", user_id="mum"),
            rec_("app", "b2", device_id="tab2", user_id="kid"),  # no majority: links nobody
        ],
    )
    stats = build_graph(idcon, LIMITS)
    linked = {(a, b) for a, b, _, _ in edges(idcon)}
    assert ("app:tab", "crm:c1") in linked
    assert ("app:tab", "crm:c2") not in linked
    assert not any("app:tab2" in pair for pair in linked)
    assert stats["shared_units.user_id"] == 2


def test_accounts_in_use_tell_people_apart_unless_dates_of_birth_agree(idcon, stg, rec_):
    stg(
        [
            # one family email, two people with their own online accounts (each seen on a cookie too)
            rec_("crm", "c1", email_key="fam@x.com", user_id="u1", first_name="sam", last_name="lee"),
            rec_("crm", "c2", email_key="fam@x.com", user_id="u2", first_name="sam", last_name="lee"),
            rec_("web", "e1", anonymous_id="k1", user_id="u1"),
            rec_("web", "e2", anonymous_id="k2", user_id="u2"),
            # a duplicate account of one person: same date of birth, so the accounts do not disagree
            rec_("crm", "c3", email_key="jo@x.com", user_id="u3", first_name="jo", date_of_birth="1990-01-01"),
            rec_("crm", "c4", email_key="jo@x.com", user_id="u4", first_name="jo", date_of_birth="1990-01-01"),
            rec_("web", "e3", anonymous_id="k3", user_id="u3"),
            rec_("web", "e4", anonymous_id="k4", user_id="u4"),
        ]
    )
    build_graph(idcon, LIMITS)
    linked = {(a, b) for a, b, _, _ in edges(idcon)}
    assert ("crm:c1", "crm:c2") not in linked
    assert ("crm:c3", "crm:c4") in linked


def test_swapped_names_with_a_nickname_are_one_person_not_a_conflict(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", phone_e164="+447700900001", first_name="susan", last_name="hall",
                 date_of_birth="1954-06-10"),
            rec_("crm", "c2", phone_e164="+447700900001", first_name="hall", last_name="sue",
                 date_of_birth="1954-06-10"),
        ]
    )  # fmt: skip
    stats = build_graph(idcon, LIMITS)
    assert ("crm:c1", "crm:c2", "phone_e164", "shared_key") in edges(idcon)
    assert stats["hub_keys_conflict"] == 0


def test_the_macros_are_declared_once_a_connection_and_again_after_a_rollback():
    import duckdb

    from identity.graph import install_macros

    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER)")
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO t VALUES (1)")
    install_macros(con)  # the probe fails inside the transaction without aborting it
    con.execute("ROLLBACK")  # and takes the macros away
    install_macros(con)
    assert con.execute("SELECT cdp_address('12 High St')").fetchall() == [("12 high street",)]
    con.execute("CREATE OR REPLACE TEMP MACRO cdp_address(a) AS 'kept'")  # declared by hand after them
    install_macros(con)  # finds them: declares nothing
    assert con.execute("SELECT cdp_address('12 High St')").fetchall() == [("kept",)]
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO t VALUES (2)")
    install_macros(con)
    con.execute("COMMIT")
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]

"""Segment YAML compiled to parameterised SQL over allow-listed profile columns, run in a sandbox.

Covers parsing, the allow-list and refusal of injection attempts; consent is covered in test_enforce.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import duckdb
import pytest

from consent.segments import (
    ALL_CUSTOMERS,
    Segment,
    SegmentError,
    compile_segment,
    get_segment,
    load_segments,
    sandbox,
    select_segment,
)


def seg(where, fields=()) -> Segment:
    return Segment("t", "test", where=where, fields=tuple(fields), file="t.yaml")


def test_conditions_compile_to_parameterised_sql():
    compiled = compile_segment(
        seg({"all": ["total_spend >= 100", {"any": ["postcode LIKE 'SW%'", "first_name = 'O''Brien'"]}]})
    )
    assert "'" not in compiled.sql and "100" not in compiled.sql  # every literal is a parameter
    assert compiled.params == {"p1": 100, "p2": "SW%", "p3": "O'Brien"}
    assert "$p1" in compiled.sql and " OR " in compiled.sql and " AND " in compiled.sql


def test_segment_selects_from_profiles(con):
    picked = select_segment(con, seg("total_spend >= 100", fields=["first_name", "total_spend"]))
    assert picked["customer_id"].tolist() == ["cC"] and list(picked.columns) == [
        "customer_id", "first_name", "total_spend",
    ]  # fmt: skip
    recent_app = "last_seen >= current_date - interval 10000 day AND list_contains(channels, 'app')"
    dated = select_segment(con, seg(recent_app))
    assert dated["customer_id"].tolist() == ["cF"]
    assert len(select_segment(con, seg(True))) == 7


INJECTIONS = {
    "x = ''; COPY customer_profiles TO '/tmp/leak.csv'": "found 2 statements|not a profile column",
    "total_spend > 0; COPY customer_profiles TO '/tmp/leak.csv'": "found 2 statements",
    "read_csv('/etc/passwd') IS NOT NULL": "function read_csv is not allowed",
    "customer_id IN (SELECT customer_id FROM consent_state)": "subqueries are not allowed",
    "EXISTS (SELECT 1)": "subqueries are not allowed",
    "secret_column = 1": "'secret_column' is not a profile column",
    "consent_state.status = 'granted'": "bare profile column names",
    "pg_read_file('x') = 'y'": "function pg_read_file is not allowed",
    "getenv('HOME') = 'x'": "not allowed",
    "total_spend > $1": "placeholder is not allowed",
    "total_spend": "not a true/false condition",
    "CAST(first_seen AS VARCHAR) = 'x'": "only DATE and TIMESTAMP casts are allowed",
    "first_seen > TIMESTAMPTZ '2026-01-01 00:00:00+02'": "timestamps with a time zone are not allowed",
    "first_seen::timestamp with time zone > current_timestamp": "timestamps with a time zone are not allowed",
    "total_spend >": "not a valid condition",
}


@pytest.mark.parametrize("condition", INJECTIONS)
def test_injection_attempts_are_refused_with_one_line(condition, tmp_path: Path):
    with pytest.raises(SegmentError, match=INJECTIONS[condition]) as caught:
        compile_segment(seg(condition))
    assert "\n" not in str(caught.value) and str(caught.value).startswith("t.yaml: condition 1")
    assert not Path("/tmp/leak.csv").exists()


def test_sandbox_cannot_read_files_or_other_tables(con):
    box = sandbox(con)
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        box.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.Error):
        box.execute("SELECT * FROM consent_state").fetchall()
    with pytest.raises(duckdb.Error, match="locked"):
        box.execute("SET enable_external_access = true")
    assert "email" in box.execute("SELECT * FROM profiles LIMIT 0").df().columns


def test_the_sandbox_keeps_times_in_utc_whatever_the_machines_zone(con, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # a fresh DuckDB connection takes its zone from the machine
    time.tzset()
    try:
        box = sandbox(con)
        assert box.execute("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]
        # 05:00 UTC is after 00:30 UTC; read as Tokyo time it would be 20:00 UTC the day before
        late = "SELECT TIMESTAMP '2026-01-01 05:00:00' < TIMESTAMPTZ '2026-01-01 00:30:00+00'"
        assert box.execute(late).fetchall() == [(False,)]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_segment_files_load_and_bad_ones_are_reported(tmp_path: Path):
    (tmp_path / "good.yaml").write_text("name: good\ndescription: d\nwhere: orders > 1\nfields: [city]\n")
    (tmp_path / "bad.yaml").write_text("name: bad\nwhere: read_csv('/etc/passwd') IS NULL\n")
    (tmp_path / "badfield.yaml").write_text("name: badfield\nwhere: true\nfields: [ssn]\n")
    found = load_segments(tmp_path)
    assert list(found) == [ALL_CUSTOMERS, "bad", "badfield", "good"]
    assert isinstance(found["good"], Segment) and found["good"].fields == ("city",)
    assert isinstance(found["bad"], SegmentError) and "read_csv" in str(found["bad"])
    assert "field 'ssn' is not a profile column" in str(found["badfield"])
    with pytest.raises(SegmentError, match="no segment named 'nope'"):
        get_segment(tmp_path, "nope")
    with pytest.raises(SegmentError, match="bad.yaml: condition 1: function read_csv"):
        get_segment(tmp_path, "bad")


def test_a_file_claiming_the_built_in_name_is_refused_and_the_built_in_stays(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text("name: all_customers\nwhere: total_spend > 100\n")
    (tmp_path / "all_customers.yaml").write_text("where: orders > 1\n")  # the name taken from the file stem
    found = load_segments(tmp_path)
    assert list(found) == [ALL_CUSTOMERS, "all_customers.yaml", "mine"]
    assert get_segment(tmp_path, ALL_CUSTOMERS).where == "true"
    assert str(found["mine"]) == f"{tmp_path / 'mine.yaml'}: all_customers is built in; give this segment another name"
    assert "all_customers is built in" in str(found["all_customers.yaml"])


def test_committed_example_segments_are_valid():
    folder = Path(__file__).resolve().parents[2] / "data" / "segments"
    found = load_segments(folder)
    assert len(found) >= 4
    assert all(isinstance(s, Segment) for s in found.values()), [str(s) for s in found.values()]


ALLOWED = [
    "total_spend >= 200 AND last_purchase_at < current_date - interval 180 day",
    "last_purchase_at < DATE '2026-01-01' OR last_purchase_at IS NULL",
    "lower(first_name) IN ('ann', 'cat') AND NOT (orders = 0)",
    "total_spend BETWEEN 10 AND 300 AND postcode ILIKE 's%'",
    "date_diff('day', first_seen, current_date) > 1 AND length(coalesce(city, '')) >= 0",
    "abs(total_spend - 250) < 1 OR list_contains(channels, 'app')",
    "first_seen > TIMESTAMP '2026-01-01 00:00:00' AND CAST(last_seen AS TIMESTAMP) < '2027-01-01'::timestamp",
]


@pytest.mark.parametrize("condition", ALLOWED)
def test_documented_conditions_compile_and_run(con, condition):
    picked = select_segment(con, seg(condition))
    assert set(picked["customer_id"]) <= {"cA", "cB", "cC", "cD", "cE", "cF", "cG"}
    # literals are parameters; only a validated whole number of an interval and a date unit stay inline
    inline = re.sub(r"INTERVAL '\d+'|'DAY'", "", compile_segment(seg(condition)).sql)
    assert "'" not in inline


def test_documented_conditions_select_the_right_customers(con):
    assert select_segment(con, seg("lower(first_name) IN ('ann', 'cat')"))["customer_id"].tolist() == ["cA", "cC"]
    assert select_segment(con, seg("abs(total_spend - 250) < 1"))["customer_id"].tolist() == ["cC"]
    since = "first_seen >= TIMESTAMP '2026-01-02 00:00:00'"  # cA, cB, cD and cG are in the CRM from 1 January
    assert select_segment(con, seg(since))["customer_id"].tolist() == ["cC", "cE", "cF"]


def test_a_condition_that_fails_on_the_data_does_not_quote_the_data(con):
    one = "customer_id = 'cA' and cast(email as date) is null"  # a failed cast names the value it read
    with pytest.raises(SegmentError) as failed:
        select_segment(con, seg(one))
    assert str(failed.value) == f"t.yaml: condition 1 ({one}) cannot run on the data (conversion error)"
    assert "@" not in str(failed.value)


def test_a_failure_on_the_data_names_the_condition_that_fails(con):
    nested = {"all": ["orders >= 0", {"any": ["total_spend > 1000", "cast(email as date)\n  is null"]}]}
    with pytest.raises(SegmentError) as failed:
        select_segment(con, seg(nested))
    reason = "t.yaml: condition 3 (cast(email as date) is null) cannot run on the data (conversion error)"
    assert str(failed.value) == reason  # the condition's text on one line, as the marketer wrote it


def test_yaml_aliases_are_refused_in_segment_files(tmp_path: Path):
    levels = ["a0: &a0 [orders > 1, orders > 2]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\nname: bomb\nwhere: {all: *a8}\n")
    with pytest.raises(SegmentError, match=r"bomb.yaml: cannot read segment: aliases \(\*name\) are not allowed"):
        get_segment(tmp_path, "bomb")


def test_the_bundled_london_segment_takes_london_districts_only():
    from identity.profiles import SEGMENT_COLUMNS

    london = load_segments(Path(__file__).resolve().parents[2] / "data" / "segments")["london_newcomers"]
    assert isinstance(london, Segment)
    con = duckdb.connect()
    con.execute(f"CREATE TABLE customer_profiles ({', '.join(f'{c} {t}' for c, t in SEGMENT_COLUMNS.items())})")
    postcodes = ["E14AB", "EH29TY", "NE11AA", "SW1A1AA", "WC2N5DU", "WR11AA", "EC1A1BB", "N11AA"]
    con.executemany(
        "INSERT INTO customer_profiles (customer_id, postcode, first_seen) VALUES (?, ?, current_timestamp)",
        [(f"c{i}", p) for i, p in enumerate(postcodes, 1)],
    )
    picked = sorted(select_segment(con, london)["customer_id"])
    assert picked == ["c1", "c4", "c5", "c7", "c8"]  # not Edinburgh, Newcastle or Worcester


@pytest.mark.parametrize(("valid_file", "broken_file"), [("a.yaml", "zeta.yaml"), ("zz.yaml", "zeta.yaml")])
def test_an_unreadable_file_and_a_segment_of_its_name_refuse_the_name_whichever_sorts_first(
    tmp_path: Path, valid_file: str, broken_file: str
):
    # zeta.yaml may be the new definition being edited: exporting the other file's zeta could reach people the
    # new one leaves out, so neither is used, and the error names both files.
    (tmp_path / valid_file).write_text("name: zeta\ndescription: old copy\nwhere: total_spend > 100\n")
    (tmp_path / broken_file).write_text("name: zeta\nwhere: total_spend >\n")
    with pytest.raises(SegmentError) as exc:
        get_segment(tmp_path, "zeta")
    assert str(tmp_path / broken_file) in str(exc.value) and str(tmp_path / valid_file) in str(exc.value)
    assert list(load_segments(tmp_path)) == [ALL_CUSTOMERS, "zeta"]

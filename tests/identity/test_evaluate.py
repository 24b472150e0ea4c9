"""Evaluation maths on a hand-made truth (P/R/F1, connectable recall, over-merges, splits); truth files refused."""

from __future__ import annotations

import duckdb
import pytest

from cdp.errors import CdpError
from identity.evaluate import evaluate, evaluate_units


def test_pairwise_metrics_by_hand():
    con = duckdb.connect()
    # p1 has units a,b,c (c not linked), p2 has d,e merged with p1's a,b into c1; f is unconnectable.
    con.execute(
        """CREATE TABLE u AS SELECT * FROM (VALUES
            ('a', 'c1', 'p1', true), ('b', 'c1', 'p1', true), ('c', 'c2', 'p1', true),
            ('d', 'c1', 'p2', true), ('e', 'c3', 'p2', true), ('f', 'c4', 'p2', false)
        ) t(unit_id, customer_id, person_id, connectable)"""
    )
    m = evaluate_units(con, "u")
    # predicted pairs: c1 has a,b,d -> 3; true pairs: p1 3 + p2 3 = 6; tp: (a,b) -> 1
    assert (m["predicted_pairs"], m["true_pairs"], m["true_positive_pairs"]) == (3, 6, 1)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 6)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 6) / (1 / 3 + 1 / 6))
    # connectable only: p1 {a,b,c} 3 pairs + p2 {d,e} 1 pair; tp 1
    assert m["recall_connectable"] == pytest.approx(1 / 4)
    assert m["over_merged_customers"] == 1
    assert m["split_persons"] == 2
    assert m["split_connectable_persons"] == 2


def test_evaluate_reads_truth_and_takes_majority_person_per_unit(tmp_path):
    con = duckdb.connect()
    con.execute("CREATE TABLE customer_source_records (source VARCHAR, source_record_id VARCHAR, "
                "customer_id VARCHAR, unit_id VARCHAR)")  # fmt: skip
    con.execute(
        """INSERT INTO customer_source_records VALUES
           ('crm', 'c1', 'X', 'crm:c1'), ('app', 'e1', 'X', 'app:d1'), ('app', 'e2', 'X', 'app:d1'),
           ('app', 'e3', 'X', 'app:d1'), ('crm', 'c2', 'Y', 'crm:c2')"""
    )
    truth = tmp_path / "records.csv"
    truth.write_text(
        "source,source_record_id,unit_id,person_id,connectable\n"
        "crm,c1,crm:c1,p1,true\napp,e1,app:d1,p1,true\napp,e2,app:d1,p1,true\n"
        "app,e3,app:d1,p2,true\ncrm,c2,crm:c2,p2,true\n"
    )
    m = evaluate(con, truth)
    # the shared device belongs to p1 (two of its three events): one pair, correctly linked
    assert m["units"] == 3
    assert (m["precision"], m["recall"]) == (1.0, pytest.approx(1.0))
    assert m["over_merged_customers"] == 0
    assert m["truth_records_unmatched"] == 0


# -- truth files that cannot be scored --------------------------------------------------------------------
HEADER = "source,source_record_id,unit_id,person_id,connectable,evidence_group\n"


def _store(path=None):
    con = duckdb.connect(str(path) if path else ":memory:")
    con.execute("CREATE TABLE customer_source_records (source VARCHAR, source_record_id VARCHAR, "
                "customer_id VARCHAR, unit_id VARCHAR)")  # fmt: skip
    con.execute("INSERT INTO customer_source_records VALUES ('crm', 'c1', 'X', 'crm:c1'), ('crm', 'c2', 'Y', 'crm:c2')")
    return con


def test_a_truth_file_none_of_whose_records_is_in_the_store_is_refused_not_scored_perfect(tmp_path):
    truth = tmp_path / "records.csv"
    truth.write_text(HEADER + "crm,z1,crm:z1,p1,true,p1/1\ncrm,z2,crm:z2,p1,true,p1/1\n")  # another inbox's
    with pytest.raises(CdpError, match="none of its 2 records is in the store; is it the truth of another inbox"):
        evaluate(_store(), truth)


def test_a_truth_file_with_some_records_missing_is_still_scored_and_counts_them(tmp_path):
    truth = tmp_path / "records.csv"
    truth.write_text(HEADER + "crm,c1,crm:c1,p1,true,p1/1\ncrm,c2,crm:c2,p2,true,p2/1\ncrm,z9,crm:z9,p3,true,p3/1\n")
    m = evaluate(_store(), truth)
    assert (m["truth_records"], m["truth_records_unmatched"], m["units"]) == (3, 1, 2)


@pytest.mark.parametrize("text", [HEADER, HEADER + "\n", ""], ids=["header_only", "header_and_blank", "empty"])
def test_a_truth_file_without_records_is_refused(tmp_path, text):
    truth = tmp_path / "records.csv"
    truth.write_text(text)
    with pytest.raises(CdpError, match=r"records\.csv: .*no records$"):
        evaluate(_store(), truth)


def test_a_directory_given_as_the_truth_file_is_named_a_directory(tmp_path):
    (tmp_path / "records.csv").write_text(HEADER + "crm,c1,crm:c1,p1,true,p1/1\n")
    with pytest.raises(CdpError, match="is a directory, not a truth file") as info:
        evaluate(_store(), tmp_path)
    assert "not found" not in str(info.value) and str(tmp_path / "records.csv") in str(info.value)


def _evaluate_command(tmp_path, monkeypatch, text: str, *options: str):
    """``cdp identity evaluate`` on a truth file of ``text`` against the two-record store."""
    from typer.testing import CliRunner

    from cdp.commands.identity import app

    db = tmp_path / "cdp.duckdb"
    if not db.exists():
        _store(db).close()
    truth = tmp_path / "records.csv"
    truth.write_text(text)
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    return truth, CliRunner().invoke(app, ["evaluate", "--truth", str(truth), "--db", str(db), *options])


def test_evaluate_command_refuses_a_foreign_truth_file_in_one_line(tmp_path, monkeypatch):
    truth, result = _evaluate_command(tmp_path, monkeypatch, HEADER + "crm,z1,crm:z1,p1,true,p1/1\n")
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(truth) in lines[0] and "none of its 1 records" in lines[0]
    assert "Precision" not in result.output


# -- truth files whose labels cannot be trusted -------------------------------------------------------------
GOOD = "crm,c1,crm:c1,p1,true,p1/1\ncrm,c2,crm:c2,p2,true,p2/1\n"


def _refusal(tmp_path, text: str) -> str:
    truth = tmp_path / "records.csv"
    truth.write_text(text)
    with pytest.raises(CdpError) as info:
        evaluate(_store(), truth)
    message = str(info.value)
    assert message.startswith(f"{truth}: ") and "\n" not in message
    return message.removeprefix(f"{truth}: ")


def test_blank_person_ids_are_refused_not_scored_as_one_person(tmp_path):
    # every label blank scored "persons 0, precision 1.0": the blank rows were grouped as one person
    assert (
        _refusal(tmp_path, HEADER + "crm,c1,crm:c1,,true,\ncrm,c2,crm:c2, ,true,\n")
        == "row 1 (crm c1): empty person_id"
    )


def test_a_record_labelled_with_two_persons_is_refused_naming_both_rows(tmp_path):
    # the file put together with a copy of itself whose persons were renamed
    text = HEADER + GOOD + GOOD.replace(",p", ",q")
    assert _refusal(tmp_path, text) == "rows 1 and 3 label crm c1 differently (person_id p1 and q1)"


def test_a_record_written_twice_alike_counts_once(tmp_path):
    truth = tmp_path / "records.csv"
    truth.write_text(HEADER + GOOD + GOOD)
    m = evaluate(_store(), truth)
    assert (m["truth_records"], m["truth_records_unmatched"], m["units"]) == (2, 0, 2)


def test_a_connectable_that_is_neither_true_nor_false_is_refused(tmp_path):
    text = HEADER + "crm,c1,crm:c1,p1,true,p1/1\ncrm,c2,crm:c2,p2,maybe,p2/1\n"
    assert _refusal(tmp_path, text) == "row 2 (crm c2): connectable 'maybe' is neither true nor false"


def test_an_unterminated_quote_is_refused_by_its_line(tmp_path):
    lines = [f"crm,c{i},crm:c{i},p{i},true,p{i}/1" for i in range(1, 9)]
    lines[4] = 'crm,"c5,crm:c5,p5,true,p5/1'  # line 6 of the file
    message = _refusal(tmp_path, HEADER + "\n".join(lines) + "\n")
    assert message.startswith("line 6 is not a CSV row (a quote left open") and 'crm,"c5' in message


def test_a_line_with_a_field_too_many_is_refused_by_its_line(tmp_path):
    assert _refusal(tmp_path, HEADER + GOOD + "crm,c3,crm:c3,p3,true,p3/1,x\n").startswith(
        "line 4 is not a CSV row (more fields than the header)"
    )


def test_the_header_is_read_whatever_its_case(tmp_path):
    truth = tmp_path / "records.csv"
    truth.write_text(HEADER.upper().replace("PERSON_ID", " Person_Id ") + GOOD)
    m = evaluate(_store(), truth)
    assert (m["truth_records"], m["units"], m["connectable_units"]) == (2, 2, 2)


def test_a_truth_file_most_of_whose_records_are_not_in_the_store_is_refused_unless_allowed(tmp_path):
    # another world's truth: two of its five records happen to carry ids this store has
    text = HEADER + GOOD + "crm,z1,crm:z1,p3,true,p3/1\ncrm,z2,crm:z2,p3,true,p3/1\ncrm,z3,crm:z3,p4,true,p4/1\n"
    assert _refusal(tmp_path, text) == (
        "3 of its 5 records are not in the store; is it the truth of another inbox? "
        "(--allow-unmatched scores it anyway)"
    )
    m = evaluate(_store(), tmp_path / "records.csv", allow_unmatched=True)
    assert (m["truth_records"], m["truth_records_unmatched"]) == (5, 3)


def test_evaluate_command_scores_a_mostly_foreign_truth_file_only_when_allowed(tmp_path, monkeypatch):
    text = HEADER + "crm,c1,crm:c1,p1,true,p1/1\ncrm,z1,crm:z1,p1,true,p1/1\ncrm,z2,crm:z2,p2,true,p2/1\n"
    _, refused = _evaluate_command(tmp_path, monkeypatch, text)
    assert refused.exit_code != 0 and "2 of its 3 records are not in the store" in refused.output
    assert "Precision" not in refused.output
    _, allowed = _evaluate_command(tmp_path, monkeypatch, text, "--allow-unmatched")
    assert allowed.exit_code == 0 and "Precision" in allowed.output
    assert "2 truth records are not in the store" in allowed.output

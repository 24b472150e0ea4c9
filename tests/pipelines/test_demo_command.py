"""`cdp demo`: the newcomer's journey from nothing to unified customers, a consented export and an erasure.

Runs the real command on a small world in a temporary folder; what each step computes is tested in its
own module, this checks that the journey holds together and prints what it promises.
"""

import csv

from typer.testing import CliRunner

from cdp.cli import app


def test_demo_builds_customers_exports_with_consent_and_erases(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "demo" / "inbox"
    db = tmp_path / "cdp.duckdb"
    result = CliRunner().invoke(app, ["demo", "--out", str(inbox), "--customers", "150", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "unified customers" in result.output
    assert "recorded in export_register" in result.output
    assert "erasure receipt request PR-" in result.output and "0 free blocks" in result.output
    # The profile it suggests next is a customer that exists, not the erased one.
    erased = result.output.split("cdp privacy erase --customer-id ")[1].split()[0]
    suggested = result.output.split("cdp profile show --customer-id ")[1].split("`")[0]
    assert suggested.startswith("cus_") and suggested != erased
    shown = CliRunner().invoke(app, ["profile", "show", "--customer-id", suggested, "--db", str(db)])
    assert shown.exit_code == 0 and suggested in shown.output
    export = tmp_path / "demo" / "exports" / "all_customers-email_marketing.csv"
    rows = list(csv.DictReader(export.open()))
    assert rows and all(row["email"] for row in rows)
    assert export.stat().st_mode & 0o077 == 0


def test_demo_run_again_on_its_store_erases_nobody_else(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "cdp.duckdb")
    args = ["demo", "--out", str(tmp_path / "demo" / "inbox"), "--customers", "60", "--db", db]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    request = first.output.split("erasure receipt request ")[1].split()[0]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"this store already holds one, request {request}, so the demo erases nobody else" in again.output
    assert "erasure receipt" not in again.output
    listed = CliRunner().invoke(app, ["privacy", "requests", "--db", db])
    assert listed.output.count("erasure") == 1, listed.output

"""The benches' own plumbing: a run that failed is never reported as a measurement."""

import pytest

from bench.run import in_fresh_process


def _module(tmp_path, monkeypatch, name: str, printed: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / f"{name}.py").write_text(f"print('progress')\nprint({printed!r})\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_a_run_whose_pipeline_failed_stops_the_bench(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    printed = '{"success": false, "failure": "step stg_consent failed", "seconds": 29.2}'
    _module(tmp_path, monkeypatch, "failed_run", printed)
    with pytest.raises(SystemExit) as stopped:
        in_fresh_process(["failed_run"], "base")
    assert stopped.value.code == "bench: base failed: step stg_consent failed"
    assert '"seconds": 29.2' in capsys.readouterr().out  # the run's line is still printed, for the record


def test_a_run_that_succeeded_is_returned(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _module(tmp_path, monkeypatch, "good_run", '{"success": true, "seconds": 3.4}')
    assert in_fresh_process(["good_run"], "batch") == {"success": True, "seconds": 3.4}


def test_the_ingest_breakdown_counts_every_statement_against_a_part_of_ingestion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every statement of a first load belongs to a named part (none to "other": a renamed Ingestor method would
    put its statements there), and DuckDB alone and the ingest stage read the same rows of the inbox."""
    from bench.ingest_breakdown import PHASES, run_one, to_markdown
    from cdp.generate import generate_world

    generate_world(tmp_path / "inbox", customers=150, seed=5)
    result = run_one(tmp_path / "inbox")
    ingest = result["ingest"]
    assert ingest["rows_in"] == result["duckdb_alone"]["rows"] > 1000
    assert ingest["files"] == result["duckdb_alone"]["files"]
    phases = ingest["phases_s"]
    assert phases["other"] == 0.0
    assert all(phases[p] > 0 for p in ("read", "classify", "reused_keys", "insert", "commit"))
    assert set(phases) == {*PHASES, "other", "python"}
    assert abs(sum(phases.values()) - ingest["seconds"]) < 0.05
    table = to_markdown(result, {"cpus": 2, "memory_gb": 1.0, "python": "3"})
    assert "keys another owner holds" in table and f"{ingest['rows_in']:,} rows" in table

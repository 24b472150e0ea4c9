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


def test_the_one_row_run_sees_the_first_rows_and_leaves_the_inbox_as_the_batch_left_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.incremental import SOURCES, _one_row_per_source

    work = tmp_path / "work"
    for source in SOURCES:
        (work / "inbox" / source).mkdir(parents=True)
        (work / "batch" / source).mkdir(parents=True)
        (work / "inbox" / source / "base.csv").write_text("id\nold\n")
        batch = "id\nnew1\nnew2\n" if source != "consent" else '{"id": 1}\n{"id": 2}\n'
        name = "new-batch.csv" if source != "consent" else "new-batch.jsonl"
        (work / "batch" / source / name).write_text(batch)
        (work / "inbox" / source / name).write_text(batch)  # as the batch step left it
    (work / "base-copy" / "home").mkdir(parents=True)
    (work / "base-copy" / "cdp.duckdb").write_text("store")
    seen = {}

    def run(step, store):  # type: ignore[no-untyped-def]
        seen["step"], seen["store"] = step, (store / "cdp.duckdb").read_text()
        seen["inbox"] = {str(p.relative_to(work / "inbox")): p.read_text() for p in (work / "inbox").rglob("*.*")}
        return {"seconds": 1.0}

    assert _one_row_per_source(work, run) == {"seconds": 1.0}
    assert seen["step"] == "one_row" and seen["store"] == "store"
    assert seen["inbox"]["web/one-row-new-batch.csv"] == "id\nnew1\n"
    assert seen["inbox"]["consent/one-row-new-batch.jsonl"] == '{"id": 1}\n'
    assert "web/new-batch.csv" not in seen["inbox"] and seen["inbox"]["web/base.csv"] == "id\nold\n"
    after = {str(p.relative_to(work / "inbox")): p.read_text() for p in (work / "inbox").rglob("*.*")}
    assert after["web/new-batch.csv"] == "id\nnew1\nnew2\n" and not any("one-row" in p for p in after)
    assert not (work / "one-row").exists()


def test_the_incremental_report_gives_each_batch_as_a_share_of_the_base_it_ran_after() -> None:
    """Shares of pairs, not of medians taken apart: the second batch is over 10% of its own base."""
    from bench.incremental import to_markdown

    def run(seconds: float, mode: str) -> dict:
        identity = {"mode": mode, "seconds": 1.0, "region_units": None if mode == "full" else 10}
        return {"seconds": seconds, "load_s": 3.0, "identity": identity, "peak_rss_mb": 1, "records": 1, "steps_s": {}}

    report = {
        "machine": {"cpus": 2, "memory_gb": 1.0, "python": "3"}, "fraction": 0.01, "batch_rows": {"web": 5},
        "steps": [run(32.0, "full"), run(3.0, "incremental"), run(0.6, "incremental"), run(18.0, "full")],
        "base_seconds": [34.0, 30.0, 32.2, 32.0], "batch_seconds": [3.2, 3.1, 3.22, 2.9],
    }  # fmt: skip
    text = to_markdown(report)
    # 3.22 s of 32.2 s is a hair under 10% in floating point, and is counted as the 10.0% it prints as.
    expected = (
        "Each batch against the base it ran after: 9.4%, 10.3%, 10.0%, 9.1% (median 9.7%; 2 of 4 at 10.0% or more)"
    )
    assert expected in text


def test_the_consent_bench_counts_customers_withheld_although_their_person_last_granted() -> None:
    """Withheld: the state says withdrawn for the purpose, the person's latest event for that purpose is a grant;
    by others: the deciding event is another person's (a version suffix aside); loose: of those, via the loose key."""
    import duckdb

    from bench.consent_bench import withheld

    con = duckdb.connect()
    columns = "customer_id VARCHAR, purpose VARCHAR, status VARCHAR, event_id VARCHAR, via VARCHAR"
    con.execute(f"CREATE TABLE consent_state ({columns})")
    con.execute("CREATE TEMP TABLE _customer_person (customer_id VARCHAR, person_id VARCHAR)")
    con.execute("CREATE TEMP TABLE _t_consent (person_id VARCHAR, purpose VARCHAR, status VARCHAR)")
    con.execute("CREATE TEMP TABLE _t_consent_events (consent_id VARCHAR, person_id VARCHAR)")
    con.execute("CREATE TABLE consent_events (event_id VARCHAR, consent_id VARCHAR)")  # the ledger, its ids
    e, s = "email_marketing", "sms_marketing"
    con.executemany(
        "INSERT INTO consent_state VALUES (?, ?, ?, ?, ?)",
        [
            ("c1", e, "withdrawn", "consent:w1", "email_key"),  # granted later, elsewhere: withheld
            ("c2", e, "withdrawn", "consent:x2@9f", "email_loose"),  # another's withdrawal, loose: all three
            ("c8", e, "withdrawn", "consent:x8", "anonymous_id"),  # another's withdrawal, a shared cookie
            ("c9", e, "withdrawn", "consent:w9", "email_loose"),  # the person's own typed withdrawal: withheld
            ("c3", e, "withdrawn", "consent:w3", "email_loose"),  # the person withdrew: right
            ("c4", e, "granted", "consent:g4", "email_key"),  # exported
            ("c5", e, "withdrawn", "consent:w5", "phone_e164"),  # the person granted SMS only: right
            ("c6", e, "withdrawn", "consent:x6", "anonymous_id"),  # the person never spoke of email: right
            ("c7", s, "withdrawn", "consent:x7", "phone_e164"),  # another purpose
        ],
    )
    con.executemany("INSERT INTO _customer_person VALUES (?, ?)", [(f"c{i}", f"P{i}") for i in range(1, 10)])
    con.execute(
        "INSERT INTO consent_events SELECT event_id, regexp_extract(event_id, '^consent:([^@]+)', 1) FROM consent_state"
    )  # a later version (x2@9f) keeps its source's consent_id
    con.executemany(
        "INSERT INTO _t_consent_events VALUES (?, ?)",
        [("w1", "P1"), ("x2", "P0"), ("x8", "P0"), ("w9", "P9"), ("w3", "P3"), ("w5", "P5"), ("x6", "P0"),
         ("x7", "P0")],
    )  # fmt: skip
    con.executemany(
        "INSERT INTO _t_consent VALUES (?, ?, ?)",
        [
            ("P1", e, "granted"), ("P2", e, "granted"), ("P3", e, "withdrawn"), ("P4", e, "granted"),
            ("P5", s, "granted"), ("P5", e, "withdrawn"), ("P7", s, "granted"), ("P7", e, "granted"),
            ("P8", e, "granted"), ("P9", e, "granted"),
        ],
    )  # fmt: skip
    assert withheld(con, e) == {"withheld": 4, "withheld_by_others": 2, "withheld_loose": 1}
    assert withheld(con, s) == {"withheld": 1, "withheld_by_others": 1, "withheld_loose": 0}

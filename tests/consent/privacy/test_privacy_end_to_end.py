"""Erasure on the real path: a generated inbox through the Dagster job, one person erased by email, every
file the platform wrote grepped (database, Dagster run and event storage, captured logs, exports), and the
job run again on the same inbox. About 15 seconds (it was a minute, and opt-in, before runs got faster);
the fast tests in test_privacy_erasure.py cover the same rules on a hand-written world without Dagster.

Identity uses the deterministic graph only when no trained Splink model is in the repository.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def test_after_erasure_no_file_the_platform_wrote_holds_the_email_and_a_rerun_brings_nothing_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_pairs: Callable[..., dict[str, int]]
) -> None:
    import identity.model
    from cdp.config import load_settings
    from cdp.generate import generate_world
    from cdp.store import connect
    from consent import erasure
    from consent.export import export_selected
    from consent.segments import get_segment
    from pipelines.run import run_pipeline

    if not identity.model.MODEL_PATH.exists():
        monkeypatch.setattr(identity.model, "predict_pairs", no_model_pairs)
    inbox = tmp_path / "inbox"
    generate_world(inbox, customers=60, seed=5)
    settings = load_settings(db_path=tmp_path / "db" / "cdp.duckdb", home=tmp_path / "home", inbox=inbox)
    assert run_pipeline(settings, inbox, echo=lambda _line: None).success

    con = connect(settings.db_path)
    found = con.execute(
        """SELECT l.customer_id, min(s.email) FILTER (WHERE s.source = 'crm') AS email
           FROM customer_source_records l JOIN stg_records s USING (source, source_record_id)
           GROUP BY 1
           HAVING count(DISTINCT l.source) FILTER (WHERE l.source IN ('crm', 'store', 'web')) = 3
              AND min(s.email) FILTER (WHERE s.source = 'crm') IS NOT NULL
           ORDER BY 1 LIMIT 1"""
    ).fetchall()
    assert found, "the generated world has no customer with CRM, store and web records"
    customer_id, email = found[0]
    segment = get_segment(settings.segments_dir, "all_customers")
    export_selected(con, segment, "analytics", settings.exports_dir / "analytics.csv")
    con.close()

    report = erasure.erase(settings, erasure.Subject.from_options(email, None, None), dry_run=False)
    assert report.plan.scope.customers == [customer_id] and report.rewritten and report.free_blocks == 0

    needle = email.encode()
    written = [settings.db_path, *settings.home.rglob("*")]
    holding = [str(p) for p in written if p.is_file() and needle in p.read_bytes()]
    assert holding == []
    assert any(p.is_file() for p in settings.dagster_home.rglob("*"))  # the grep did cover Dagster's storage

    assert run_pipeline(settings, inbox, echo=lambda _line: None).success
    con = connect(settings.db_path, read_only=True)
    key = erasure.Subject.from_options(email, None, None).value
    back = con.execute("SELECT count(*) FROM stg_records WHERE email_key = ?", [key]).fetchall()[0][0]
    gone = con.execute("SELECT count(*) FROM customer_source_records WHERE customer_id = ?", [customer_id]).fetchall()
    con.close()
    assert back == 0 and gone == [(0,)]

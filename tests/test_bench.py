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

"""The project's compute logs (pipelines/compute_logs.py): captured to Dagster's files, mirrored by a thread."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipelines.compute_logs import ThreadMirroredComputeLogManager, mirrored_to_file
from pipelines.run import PROJECT_DAGSTER_YAML


@dg.asset
def talkative() -> None:
    print("rows loaded: 3")  # Python's stdout
    os.write(sys.stderr.fileno(), b"a library's own warning\n")  # to the descriptor, as C code writes


def test_output_reaches_the_file_and_the_terminal_before_the_block_ends(tmp_path):
    captured = tmp_path / "step.out"
    with open(tmp_path / "terminal", "w+b") as terminal:
        with mirrored_to_file(terminal, str(captured)):
            terminal.write(b"through the stream\n")
            terminal.flush()
            os.write(terminal.fileno(), b"through the descriptor\n")
        terminal.write(b"after the capture\n")
        terminal.flush()
        terminal.seek(0)
        shown = terminal.read()
    assert captured.read_bytes() == b"through the stream\nthrough the descriptor\n"
    assert shown == b"through the stream\nthrough the descriptor\nafter the capture\n"


def test_a_large_output_is_mirrored_whole(tmp_path):
    line = b"x" * 999 + b"\n"
    with open(tmp_path / "terminal", "w+b") as terminal:
        with mirrored_to_file(terminal, str(tmp_path / "step.out")):
            for _ in range(500):  # several reads' worth
                os.write(terminal.fileno(), line)
        terminal.seek(0)
        assert terminal.read() == line * 500


def test_a_stream_without_a_descriptor_is_left_alone(tmp_path, capsys):
    with mirrored_to_file(sys.stdout, str(tmp_path / "step.out")):  # pytest's stand-in, as Dagster's tests see
        print("not captured")
    assert capsys.readouterr().out == "not captured\n"
    assert (tmp_path / "step.out").read_text() == ""


def test_project_instance_captures_a_run_without_starting_processes(tmp_path, monkeypatch, capfd):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    def no_processes(*_args, **_kwargs):
        raise AssertionError("a process was started to mirror the logs")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    instance = dg.DagsterInstance.get()
    try:
        manager = instance.compute_log_manager
        assert isinstance(manager, ThreadMirroredComputeLogManager)
        assert Path(manager._base_dir) == home / "storage"  # Dagster's own place
        result = dg.materialize([talkative], instance=instance)
        assert result.success
        (captured,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.LOGS_CAPTURED]
        log_key = manager.build_log_key_for_run(result.run_id, captured.logs_captured_data.file_key)
        data = manager.get_log_data(log_key)
        assert data.stdout is not None and b"rows loaded: 3" in data.stdout
        assert data.stderr is not None and b"a library's own warning" in data.stderr
        assert manager.is_capture_complete(log_key)
    finally:
        instance.dispose()
    terminal = capfd.readouterr()
    assert "rows loaded: 3" in terminal.out
    assert "a library's own warning" in terminal.err


@pytest.mark.parametrize("config", [{}, {"base_dir": "elsewhere"}])
def test_configured_from_dagster_yaml(tmp_path, monkeypatch, config):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    manager = ThreadMirroredComputeLogManager.from_config_value(None, config)
    assert manager._base_dir == config.get("base_dir", str(tmp_path / "storage"))

"""The inbox sensor: a run for files that have finished landing, once per file version."""

import os

import dagster as dg

from pipelines.definitions import defs
from pipelines.resources import Inbox
from pipelines.sensors import PIPELINE_JOB, inbox_sensor


def _look(inbox, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, resources={"inbox": Inbox(path=str(inbox))})
    return inbox_sensor(context)


def _drop(inbox, name: str, text: str, mtime_ns: int) -> None:
    path = inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_is_launched_once_it_has_settled_and_only_once(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = _look(inbox)
    assert not first.run_requests and "no new file" in first.skip_reason.skip_message

    _drop(inbox, "web/web-001.csv", "event_id,event_time,anonymous_id\n", 1_000)
    _drop(inbox, "crm/notes.txt", "not an export", 1_000)  # not a format the ingestion reads
    landing = _look(inbox, first.cursor)
    assert not landing.run_requests and "1 still being written" in landing.skip_reason.skip_message

    settled = _look(inbox, landing.cursor)
    [request] = settled.run_requests
    assert request.tags["cdp/new_files"] == "1"

    again = _look(inbox, settled.cursor)
    assert not again.run_requests

    # A second export: one more run, with a run key of its own; a file rewritten counts as new again.
    _drop(inbox, "store/store-001.csv", "transaction_id,transaction_time\n", 2_000)
    _drop(inbox, "web/web-001.csv", "event_id,event_time,anonymous_id\n1,2026-01-01,a\n", 3_000)
    more = _look(inbox, _look(inbox, again.cursor).cursor)
    [second] = more.run_requests
    assert second.tags["cdp/new_files"] == "2" and second.run_key != request.run_key


def test_a_file_still_growing_waits(tmp_path):
    inbox = tmp_path / "inbox"
    _drop(inbox, "app/app-001.csv", "event_id", 1_000)
    cursor = _look(inbox).cursor
    _drop(inbox, "app/app-001.csv", "event_id,event_time,device_id\n", 2_000)  # still being copied
    growing = _look(inbox, cursor)
    assert not growing.run_requests
    assert _look(inbox, growing.cursor).run_requests


def test_a_missing_inbox_is_a_reason_to_skip(tmp_path):
    result = _look(tmp_path / "nowhere")
    assert not result.run_requests and "no inbox folder" in result.skip_reason.skip_message


def test_the_code_location_has_it_for_the_pipeline_job_and_off_by_default():
    sensor = defs.resolve_sensor_def("inbox_sensor")
    assert sensor.job_name == PIPELINE_JOB
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_job_def(PIPELINE_JOB) is not None
